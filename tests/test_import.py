"""Batch import of a rig's output folder: `vault.workspace.import_folder` and `localvault import`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from localvault import Vault
from localvault._intake import scan
from localvault.cli import main
from localvault.errors import NotFoundError, StorageError
from localvault.files import LIBRARY_BUCKET, TEMP_PREFIX, WORKSPACE_BUCKET, FileStore
from localvault.import_report import ImportInterrupted
from localvault.importer import Importer
from localvault.progress import ProgressEvent
from localvault.workspace import Workspace

try:
    from mediafiles import make_jpeg, make_png
except ImportError:  # pragma: no cover - the shared helpers are written by another engineer
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    def make_png(path, size=(64, 64), text_chunks=None, color=0, **_):  # type: ignore[no-redef]
        info = PngInfo()
        for key, value in (text_chunks or {}).items():
            info.add_text(key, value)
        Image.new("RGB", size, (color * 7 % 256, color * 13 % 256, color * 29 % 256)).save(path, "PNG", pnginfo=info)
        return Path(path)

    def make_jpeg(path, exif_user_comment=None, size=(64, 64), color=0, **_):  # type: ignore[no-redef]
        Image.new("RGB", size, (color * 7 % 256, 3, 9)).save(path, "JPEG")
        return Path(path)


USER = "0c0c0c0c-0000-4000-8000-00000000000c"


def a1111(prompt: str, seed: int, model: str = "sdxl_base") -> dict[str, str]:
    return {"parameters": f"{prompt}\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, "
                          f"Seed: {seed}, Size: 64x64, Model: {model}"}


def rig_folder(folder: Path, start: float = 1_700_000_000.0) -> list[Path]:
    """Two runs of three A1111 PNGs (seeds vary), then one JPEG with no metadata; mtimes 2 s apart."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(6):
        prompt = "a red fox" if i < 3 else "a blue heron"
        paths.append(make_png(folder / f"{i:05d}.png", text_chunks=a1111(prompt, 100 + i), color=i + 1))
    paths.append(make_jpeg(folder / "photo.jpg", color=99))
    for i, path in enumerate(paths):
        os.utime(path, (start + 2 * i, start + 2 * i))
    return paths


def take_by(mode: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Imports examine their files in ``mode``: "threads" (as small imports do) or "processes" (as big ones)."""
    from localvault import importer

    monkeypatch.setattr(importer, "PROCESS_MIN_FILES", 1 if mode == "processes" else 10**9)
    return mode


@pytest.fixture(autouse=True, params=["threads", "processes"])
def intake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs twice: as small imports do (threads), and as big ones do (worker processes)."""
    return take_by(str(request.param), monkeypatch)


@pytest.fixture
def vault(tmp_path: Path):
    v = Vault.create(tmp_path / "vault", user_id=USER)
    yield v
    v.close()


def test_import_counts_jobs_and_idempotency(vault: Vault, tmp_path: Path) -> None:
    paths = rig_folder(tmp_path / "out")
    events: list[ProgressEvent] = []
    first = vault.workspace.import_folder(tmp_path / "out", progress=events.append)
    assert len(first.imported) == 7 and not first.duplicates and not first.refused
    assert sum(e.advance for e in events) == 7
    assert sum(e.bytes_advance for e in events) == sum(p.stat().st_size for p in paths)
    by_source = {Path(item.source).name: item for item in first.imported}
    fox = [by_source[f"0000{i}.png"] for i in range(3)]
    heron = [by_source[f"0000{i}.png"] for i in range(3, 6)]
    assert len({f.job_id for f in fox}) == 1 and [f.asset_index for f in fox] == [0, 1, 2]
    assert len({h.job_id for h in heron}) == 1 and [h.asset_index for h in heron] == [0, 1, 2]
    assert fox[0].job_id != heron[0].job_id
    assert by_source["photo.jpg"].job_id not in (fox[0].job_id, heron[0].job_id)
    asset = vault.workspace.get(fox[1].asset_id)
    assert (asset.original_prompt, asset.generation_seed, asset.model_used) == ("a red fox", 101, "sdxl_base")
    assert asset.generation_settings["negative_prompt"] == "blurry"
    photo = vault.workspace.get(by_source["photo.jpg"].asset_id)
    assert (photo.original_prompt, photo.generation_seed, photo.model_used) == ("", 0, "unknown")
    assert vault.files.exists(WORKSPACE_BUCKET, asset.temp_storage_path)

    second = vault.workspace.import_folder(tmp_path / "out")
    assert not second.imported and len(second.duplicates) == 7 and not second.refused
    assert second.summary().startswith("0 imported, 7 skipped as duplicates")
    assert vault.workspace.count() == 7
    assert not [n for _d, _s, names in os.walk(vault.root / WORKSPACE_BUCKET) for n in names if n.startswith(TEMP_PREFIX)]


def test_jobs_follow_the_files_times_not_their_names(vault: Vault, tmp_path: Path) -> None:
    """Grouping walks files in mtime order: names sorting against their times must not split or mix runs;
    the same prompt again after more than the window (60 s) is a new job."""
    folder = tmp_path / "out"
    folder.mkdir()
    start = 1_700_000_000.0
    # (name, prompt, seconds after start): names sort z, y, x... against their times
    plan = [("z.png", "fox", 0), ("y.png", "fox", 2), ("x.png", "heron", 4), ("w.png", "heron", 6),
            ("v.png", "fox", 8), ("u.png", "fox", 10 + 120), ("t.png", "fox", 10 + 150)]
    for n, (name, prompt, offset) in enumerate(plan):
        make_png(folder / name, text_chunks=a1111(prompt, n), color=n + 1)
        os.utime(folder / name, (start + offset, start + offset))
    result = vault.workspace.import_folder(folder)
    by_name = {Path(item.source).name: item for item in result.imported}
    job = {name: by_name[name].job_id for name, _prompt, _offset in plan}
    assert job["z.png"] == job["y.png"] and [by_name[n].asset_index for n in ("z.png", "y.png")] == [0, 1]
    assert job["x.png"] == job["w.png"] and [by_name[n].asset_index for n in ("x.png", "w.png")] == [0, 1]
    assert len({job["z.png"], job["x.png"], job["v.png"], job["u.png"]}) == 4  # heron between; 120 s gap
    assert job["u.png"] == job["t.png"]  # 30 s apart: within the window


def test_an_import_lists_newest_file_first_not_in_random_order(vault: Vault, tmp_path: Path) -> None:
    """A batch's rows share one created_at; the list must still show them as the files came, the newest first,
    page after page (its tie was broken by random ids)."""
    folder = tmp_path / "out"
    folder.mkdir()
    start = 1_700_000_000.0
    names = [f"{chr(ord('z') - n)}.png" for n in range(24)]  # names sort against their times
    for n, name in enumerate(names):
        make_png(folder / name, text_chunks=a1111("fox", n), color=n + 1)
        os.utime(folder / name, (start + 2 * n, start + 2 * n))
    result = vault.workspace.import_folder(folder)
    assert len(result.imported) == 24
    name_of = {item.asset_id: Path(item.source).name for item in result.imported}
    listed: list[str] = []
    cursor = None
    while True:
        page = vault.workspace.list(limit=5, cursor=cursor)
        listed += [name_of[a.id] for a in page.items]
        if (cursor := page.next_cursor) is None:
            break
    assert listed == names[::-1]


def test_expired_assets_do_not_count_as_duplicates(vault: Vault, tmp_path: Path) -> None:
    """An expired asset that cleanup has not removed yet is replaced, not reported as a duplicate."""
    rig_folder(tmp_path / "out")
    first = {Path(item.source).name: item for item in vault.workspace.import_folder(tmp_path / "out").imported}
    old_fox = vault.workspace.get(first["00001.png"].asset_id)
    vault.workspace.expire(old_fox.id)
    vault.workspace.expire(first["photo.jpg"].asset_id)

    again = vault.workspace.import_folder(tmp_path / "out")
    assert sorted(Path(item.source).name for item in again.imported) == ["00001.png", "photo.jpg"]
    assert len(again.duplicates) == 5 and not again.refused
    assert vault.workspace.count() == 7
    for gone in (old_fox.id, first["photo.jpg"].asset_id):
        with pytest.raises(NotFoundError):
            vault.workspace.get(gone)
    by_source = {Path(item.source).name: item for item in again.imported}
    fox = vault.workspace.get(by_source["00001.png"].asset_id)
    assert fox.job_id == old_fox.job_id and fox.asset_index == 3  # its job's next free index
    assert fox.sha256 == old_fox.sha256 and fox.expires_at > old_fox.created_at
    photo = vault.workspace.get(by_source["photo.jpg"].asset_id)  # alone in its job: the next index all the same
    old_photo = first["photo.jpg"]
    assert (photo.job_id, photo.asset_index) == (old_photo.job_id, old_photo.asset_index + 1)

    # The replaced files are gone when the import returns (they stayed until a later delete or housekeeping).
    assert not vault.files.exists(WORKSPACE_BUCKET, old_fox.temp_storage_path)
    assert not vault.files.exists(WORKSPACE_BUCKET, photo.temp_storage_path.replace("/1.", "/0."))
    assert vault.files.exists(WORKSPACE_BUCKET, fox.temp_storage_path)
    assert vault.files.exists(WORKSPACE_BUCKET, photo.temp_storage_path)
    assert not vault.db.conn.execute("SELECT count(*) FROM pending_deletes").fetchone()[0]
    assert vault.verify().clean

    # One file added by hand takes the same rule.
    vault.workspace.expire(fox.id)
    renewed = vault.workspace.add(tmp_path / "out" / "00001.png")
    assert renewed.sha256 == fox.sha256 and renewed.id != fox.id
    assert vault.workspace.count() == 7
    assert not vault.files.exists(WORKSPACE_BUCKET, fox.temp_storage_path)
    assert not vault.db.conn.execute("SELECT count(*) FROM pending_deletes").fetchone()[0]


def test_failed_replacement_of_an_expired_asset_keeps_it_whole(vault: Vault, tmp_path: Path) -> None:
    """If adding the bytes of an expired asset fails, the rollback brings its row back, and its file is intact."""
    rig_folder(tmp_path / "out")
    first = {Path(item.source).name: item for item in vault.workspace.import_folder(tmp_path / "out").imported}
    expired = vault.workspace.get(first["00002.png"].asset_id)  # the last of its job: the highest index
    vault.workspace.expire(expired.id)
    # (in the database, not TEMP: the importer commits on a connection of its own thread)
    vault.db.conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON workspace_assets"
                          " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    with pytest.raises(sqlite3.IntegrityError):  # one file, added by hand, in its original job
        vault.workspace.add(tmp_path / "out" / "00002.png", job_id=expired.job_id)
    result = vault.workspace.import_folder(tmp_path / "out")  # the importer's batch path
    assert str(tmp_path / "out" / "00002.png") in result.refused and not result.imported  # the batch failed whole
    vault.db.conn.execute("DROP TRIGGER refuse")
    assert vault.workspace.get(expired.id).sha256 == expired.sha256
    assert vault.files.sha256(WORKSPACE_BUCKET, expired.temp_storage_path) == expired.sha256
    assert vault.verify().clean


def test_library_copy_counts_as_duplicate(vault: Vault, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    path = make_png(tmp_path / "out" / "a.png", color=5)
    kept = vault.library.save(vault.workspace.add(path).id)
    vault.workspace.delete(vault.workspace.list().items[0].id)
    assert kept.sha256
    result = vault.workspace.import_folder(tmp_path / "out")
    assert not result.imported and result.duplicates == [str(path)]


def test_bad_files_are_refused_with_reasons_and_the_rest_imported(vault: Vault, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rig_folder(out)
    (out / "garbage.png").write_bytes(b"this is not an image at all")
    whole = make_png(tmp_path / "whole.png", color=42).read_bytes()
    (out / "truncated.png").write_bytes(whole[: len(whole) // 2])
    make_png(out / "jpeg-named.jpg", color=43)
    (out / "empty.webp").write_bytes(b"")
    ihdr = b"IHDR" + (2**31).to_bytes(4, "big") + whole[20:29]  # a header claiming 2**31 pixels wide
    (out / "wide.png").write_bytes(whole[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + whole[33:])
    result = vault.workspace.import_folder(out)
    assert len(result.imported) == 7
    assert set(map(lambda p: Path(p).name, result.refused)) == {"garbage.png", "truncated.png", "jpeg-named.jpg",
                                                                "empty.webp", "wide.png"}
    reasons = {Path(p).name: r for p, r in result.refused.items()}
    assert "not a JPEG, PNG, WebP or MP4" in reasons["garbage.png"]
    assert "truncated" in reasons["truncated.png"]
    assert "rename it to .png" in reasons["jpeg-named.jpg"]
    assert "empty" in reasons["empty.webp"]
    assert "claims 2147483648×" in reasons["wide.png"]  # (the server's columns are integers)


def test_hidden_temp_and_unknown_files_are_ignored(vault: Vault, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    make_png(out / "real.png", color=1)
    for i, name in enumerate([".hidden.png", "a.png.tmp", "b.png.part", "c.png.crdownload", "d.png~", "notes.txt"]):
        make_png(out / name, color=10 + i)
    result = vault.workspace.import_folder(out)
    assert [Path(i.source).name for i in result.imported] == ["real.png"]
    assert not result.refused and not result.duplicates and result.ignored == 6


def test_symlink_leading_outside_is_refused(vault: Vault, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    outside = make_png(tmp_path / "secret.png", color=3)
    make_png(out / "inside.png", color=4)
    (out / "escape.png").symlink_to(outside)
    (out / "alias.png").symlink_to(out / "inside.png")
    (out / "dangling.png").symlink_to(out / "unmounted" / "00001.png")  # said, not only counted as ignored
    result = vault.workspace.import_folder(out)
    assert "leads outside the folder" in result.refused[str(out / "escape.png")]
    assert "which is not there (a disk not mounted?)" in result.refused[str(out / "dangling.png")]
    assert len(result.imported) == 1 and len(result.duplicates) == 1  # the inside link is the same bytes
    assert result.ignored == 0


def test_recursive(vault: Vault, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "day1").mkdir(parents=True)
    make_png(out / "day1" / "a.png", color=1)
    make_png(out / "top.png", color=2)
    assert len(vault.workspace.import_folder(out).imported) == 1
    deep = vault.workspace.import_folder(out, recursive=True)
    assert [Path(i.source).name for i in deep.imported] == ["a.png"] and len(deep.duplicates) == 1
    assert deep.folders_not_entered == 0


def test_an_import_says_which_sub_folders_it_did_not_look_in(tmp_path: Path) -> None:
    """A1111 writes into a folder per day: an import of its output folder without -r found nothing and said
    nothing. And a vault kept inside the rig's folder is not the rig's: -r does not walk into it."""
    out = tmp_path / "out"
    for day in ("2026-11-27", "2026-11-28"):
        (out / day).mkdir(parents=True)
        make_png(out / day / "00001.png", color=len(day) + int(day[-1]))
    runner = CliRunner()
    base = ["--vault", str(out / "vault")]  # the vault in the rig's folder
    assert runner.invoke(main, [*base, "init", "--user", USER]).exit_code == 0
    flat = runner.invoke(main, [*base, "import", str(out)])
    assert flat.exit_code == 0 and "0 imported" in flat.output
    assert "3 sub-folders not looked in: add --recursive (-r)" in flat.stderr
    deep = runner.invoke(main, [*base, "import", "-r", str(out), "--json"])
    report = json.loads(deep.stdout)
    assert (len(report["imported"]), report["duplicates"], report["folders_not_entered"]) == (2, [], 1)
    again = json.loads(runner.invoke(main, [*base, "import", "-r", str(out), "--json"]).stdout)
    assert (again["imported"], len(again["duplicates"]), again["refused"]) == ([], 2, {})  # not the vault's copies
    assert "not looked in" not in runner.invoke(main, [*base, "import", "-r", str(out)]).stderr


def test_move_deletes_sources_only_after_commit(vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = rig_folder(tmp_path / "out")
    real = Workspace.add_batch
    seen_at_commit: list[bool] = []

    def watching(self, entries, **kw):  # type: ignore[no-untyped-def]
        seen_at_commit.append(all(p.exists() for p in paths))
        return real(self, entries, **kw)

    monkeypatch.setattr(Workspace, "add_batch", watching)
    result = vault.workspace.import_folder(tmp_path / "out", mode="move")
    assert seen_at_commit == [True] and len(result.imported) == 7
    assert not any(p.exists() for p in paths)
    for item in result.imported:
        assert vault.files.sha256(WORKSPACE_BUCKET, vault.workspace.get(item.asset_id).temp_storage_path) == item.sha256


def test_move_keeps_sources_when_the_commit_fails(vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = rig_folder(tmp_path / "out")

    def failing(self, entries, **kw):  # type: ignore[no-untyped-def]
        raise StorageError("the disk is full")

    monkeypatch.setattr(Workspace, "add_batch", failing)
    result = vault.workspace.import_folder(tmp_path / "out", mode="move")
    assert not result.imported and len(result.refused) == 7
    assert all(p.exists() for p in paths)
    assert vault.workspace.count() == 0


def test_link_mode_shares_the_inode(vault: Vault, tmp_path: Path) -> None:
    paths = rig_folder(tmp_path / "out")
    result = vault.workspace.import_folder(tmp_path / "out", mode="link")
    assert len(result.imported) == 7
    for item in result.imported:
        stored = vault.files.local_path(WORKSPACE_BUCKET, vault.workspace.get(item.asset_id).temp_storage_path)
        assert stored.stat().st_ino == Path(item.source).stat().st_ino
    assert all(p.exists() for p in paths)


def test_a_library_copy_of_a_linked_import_is_its_own_file(vault: Vault, tmp_path: Path) -> None:
    """Saving an asset imported with --link copies its file (the rig's, shared with the workspace): a rig that
    rewrites its file in place then changes the workspace's copy only, never the library's. A file rewritten
    before the save is refused, and the save leaves nothing behind."""
    paths = rig_folder(tmp_path / "out")
    result = vault.workspace.import_folder(tmp_path / "out", mode="link")
    by_source = {Path(item.source): item.asset_id for item in result.imported}
    kept_path, rewritten_path = [p for p in paths if p in by_source and p.suffix == ".png"][:2]
    kept = vault.library.save(by_source[kept_path])
    library_file = vault.files.local_path(LIBRARY_BUCKET, kept.storage_path)
    assert library_file.stat().st_ino != kept_path.stat().st_ino and library_file.stat().st_nlink == 1

    for source in (kept_path, rewritten_path):  # the rig writes over its files, in place
        with open(source, "r+b") as rig:
            rig.seek(-20, os.SEEK_END)
            rig.write(b"\0" * 8)
    assert vault.library.get(kept.id).sha256 == hashlib.sha256(library_file.read_bytes()).hexdigest()
    with pytest.raises(StorageError, match="no longer holds the bytes it was stored with"):
        vault.library.save(by_source[rewritten_path])
    assert vault.library.count() == 1 and {p.name for p in (vault.root / LIBRARY_BUCKET / USER).iterdir()} == {
        library_file.name}
    assert vault.verify().mismatched and not any(LIBRARY_BUCKET in entry for entry in vault.verify().mismatched)


def test_the_copy_of_a_save_does_not_hold_the_vault_s_write_lock(vault: Vault, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The library's copy of a linked import (up to 1 GiB) was made inside the save's write transaction: every
    other writer of the vault (a watcher, an app) waited for it. It is made before now; the row after."""
    paths = rig_folder(tmp_path / "out")
    result = vault.workspace.import_folder(tmp_path / "out", mode="link")
    asset_id = next(i.asset_id for i in result.imported if Path(i.source) in paths and i.source.endswith(".png"))
    real_copy = FileStore.stage
    others_wrote: list[bool] = []

    def copy_while_another_writes(self: FileStore, *args: Any, **kwargs: Any) -> Any:
        other = sqlite3.connect(vault.root / "vault.db", timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")  # "database is locked" at once if the save held the write lock
            other.execute("INSERT INTO vault_meta (key, value) VALUES ('other-writer', 'here')")
            other.commit()
            others_wrote.append(True)
        finally:
            other.close()
        return real_copy(self, *args, **kwargs)

    monkeypatch.setattr(FileStore, "stage", copy_while_another_writes)
    kept = vault.library.save(asset_id, title="kept")
    assert others_wrote == [True]
    assert vault.db.get_meta("other-writer") == "here"
    assert vault.library.get(kept.id).title == "kept" and vault.files.local_path(
        LIBRARY_BUCKET, kept.storage_path).stat().st_nlink == 1


def test_a_vault_opened_while_a_save_copies_leaves_the_save_s_file_alone(vault: Vault, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A vault opened for writing settles the notes of writes killed between their rename and their commit
    (_write_intents): under the write lock no write is there, so a noted file without a row is a dead write's.
    A save whose copy sat at its final name before the lock broke that: another process opening the vault
    meanwhile removed the file of a save about to commit (the four-process test found a library row without its
    file). The copy keeps a temporary name until the save's transaction renames it."""
    paths = rig_folder(tmp_path / "out")
    result = vault.workspace.import_folder(tmp_path / "out", mode="link")
    asset_id = next(i.asset_id for i in result.imported if Path(i.source) in paths and i.source.endswith(".png"))
    real_stage = FileStore.stage_from

    def another_process_opens_the_vault_meanwhile(self: FileStore, *args: Any, **kwargs: Any) -> Any:
        staged = real_stage(self, *args, **kwargs)
        Vault.open(vault.root).close()  # settles the save's note, under the write lock
        return staged

    real_commit = FileStore.commit
    renamed_in_a_transaction: list[bool] = []

    def commit(self: FileStore, *args: Any, **kwargs: Any) -> None:
        renamed_in_a_transaction.append(vault.db.conn.in_transaction)  # (the save's, under the write lock)
        real_commit(self, *args, **kwargs)

    monkeypatch.setattr(FileStore, "stage_from", another_process_opens_the_vault_meanwhile)
    monkeypatch.setattr(FileStore, "commit", commit)
    kept = vault.library.save(asset_id)
    assert renamed_in_a_transaction == [True]
    assert vault.files.local_path(LIBRARY_BUCKET, kept.storage_path).is_file()
    assert vault.verify().clean


def test_a_save_of_an_asset_deleted_during_its_copy_is_not_found_and_leaves_nothing(
        vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy now runs outside the write transaction: the workspace asset may go meanwhile (its expiry's
    cleanup, a delete from another process). The save then says it is not found, and leaves no file or row."""
    paths = rig_folder(tmp_path / "out")
    result = vault.workspace.import_folder(tmp_path / "out", mode="link")
    asset_id = next(i.asset_id for i in result.imported if Path(i.source) in paths and i.source.endswith(".png"))
    real_copy = FileStore.stage

    def deleted_before_its_copy(self: FileStore, *args: Any, **kwargs: Any) -> Any:
        Vault.open(vault.root).workspace.delete(asset_id)
        return real_copy(self, *args, **kwargs)

    monkeypatch.setattr(FileStore, "stage", deleted_before_its_copy)
    with pytest.raises(NotFoundError, match=f"no workspace asset {asset_id}"):
        vault.library.save(asset_id)
    assert vault.library.count() == 0
    assert not list((vault.root / LIBRARY_BUCKET).rglob("*.*"))
    assert not vault.db.conn.execute("SELECT count(*) FROM write_intents").fetchone()[0]


def test_job_ids_are_deterministic_across_vaults(tmp_path: Path) -> None:
    rig_folder(tmp_path / "out")
    layouts = []
    for name in ("one", "two"):
        with Vault.create(tmp_path / name, user_id=USER) as v:
            result = v.workspace.import_folder(tmp_path / "out", workers=3 if name == "one" else 1)
            layouts.append(sorted((Path(i.source).name, i.job_id, i.asset_index) for i in result.imported))
    assert layouts[0] == layouts[1]


def test_run_id_groups_and_later_files_take_next_indexes(vault: Vault, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for i, (name, run) in enumerate([("a.png", "run-7"), ("b.png", "run-8"), ("c.png", "run-7")]):
        path = make_png(out / name, color=20 + i)
        (out / f"{path.stem}.json").write_text(json.dumps({"prompt": f"p{i}", "seed": i, "run_id": run}))
        os.utime(path, (1_700_000_000 + 1000 * i,) * 2)  # far apart: only the run id can group them
    first = {Path(i.source).name: i for i in vault.workspace.import_folder(out).imported}
    assert first["a.png"].job_id == first["c.png"].job_id != first["b.png"].job_id
    assert (first["a.png"].asset_index, first["c.png"].asset_index) == (0, 1)
    later = make_png(out / "d.png", color=30)
    (out / "d.json").write_text(json.dumps({"prompt": "p3", "run_id": "run-7"}))
    again = vault.workspace.import_folder(out)
    assert [(Path(i.source).name, i.job_id, i.asset_index) for i in again.imported] == [
        (later.name, first["a.png"].job_id, 2)]


def test_a_batch_with_a1111_text_sidecars_is_one_job(vault: Vault, tmp_path: Path) -> None:
    """A1111's "save text information about generation parameters" writes NAME.txt beside each image."""
    out = tmp_path / "out"
    out.mkdir()
    for i in range(4):
        path = make_png(out / f"0000{i}-{100 + i}.png", color=40 + i)
        (out / f"{path.stem}.txt").write_text(a1111("a lighthouse at dusk", 100 + i)["parameters"])
        os.utime(path, (1_700_000_000 + i,) * 2)
    result = vault.workspace.import_folder(out)
    assert sorted(i.asset_index for i in result.imported) == [0, 1, 2, 3]
    assert len({i.job_id for i in result.imported}) == 1


def test_an_import_again_fills_placeholders_from_a_sidecar_that_came_since(vault: Vault, tmp_path: Path) -> None:
    """A file first taken without metadata is a duplicate the next time; a sidecar now beside it fills the
    placeholders of the asset (never metadata it has: a sidecar does not overwrite)."""
    out = tmp_path / "out"
    out.mkdir()
    bare = make_png(out / "00001-7.png", color=41)
    own = make_png(out / "00002-8.png", color=42, text_chunks=a1111("its own prompt", 8))
    first = vault.workspace.import_folder(out)
    assert first.filled == {} and len(first.imported) == 2
    (out / "00001-7.txt").write_text(a1111("a lighthouse at dusk", 7)["parameters"])
    (out / "00002-8.txt").write_text(a1111("another prompt", 999)["parameters"])
    again = vault.workspace.import_folder(out)
    bare_id = next(i.asset_id for i in first.imported if i.source == str(bare))
    assert sorted(again.duplicates) == sorted([str(bare), str(own)]) and again.filled == {str(bare): bare_id}
    assets = {a.id: a for a in vault.workspace.list(limit=10).items}
    assert (assets[bare_id].generation_seed, assets[bare_id].original_prompt) == (7, "a lighthouse at dusk")
    assert assets[bare_id].generation_settings["sidecar"] == "00001-7.txt"
    assert {(a.generation_seed, a.original_prompt) for a in assets.values() if a.id != bare_id} == {
        (8, "its own prompt")}
    assert vault.workspace.import_folder(out).filled == {}  # filled once


def test_cli_import_json_names_the_assets_a_late_sidecar_filled(tmp_path: Path) -> None:
    """Before: the text output said so, the --json report left "filled" out."""
    out = tmp_path / "out"
    out.mkdir()
    bare = make_png(out / "00001-7.png", color=41)
    base = ["--vault", str(tmp_path / "v")]
    runner = CliRunner()
    assert runner.invoke(main, [*base, "init", "--user", USER]).exit_code == 0
    first = json.loads(runner.invoke(main, [*base, "import", str(out), "--json"]).output)
    assert first["filled"] == {}
    (out / "00001-7.txt").write_text(a1111("a lighthouse at dusk", 7)["parameters"])
    again = runner.invoke(main, [*base, "import", str(out), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["filled"] == {str(bare): first["imported"][0]["asset_id"]}


def test_a_caption_written_long_after_its_image_fills_nothing(vault: Vault, tmp_path: Path) -> None:
    """A tagger (kohya, WD14) writes NAME.txt beside each image, days later: a caption, no generation's
    metadata. Only a sidecar written within a minute of its image fills the asset an import finds again."""
    out = tmp_path / "out"
    out.mkdir()
    image = make_png(out / "00001-7.png", color=41)
    vault.workspace.import_folder(out)
    caption = out / "00001-7.txt"
    caption.write_text("1girl, solo, red hair")
    os.utime(image, (time.time() - 2 * 86400,) * 2)
    again = vault.workspace.import_folder(out)
    assert again.duplicates == [str(image)] and again.filled == {}
    assert vault.workspace.list(limit=1).items[0].original_prompt == ""


def test_a_fill_that_fails_leaves_the_import_as_it_was(vault: Vault, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The import's rows are committed (and --move's sources deleted) before the fill: a fill that fails (the
    database locked for long, the disk full) is a warning, not the import's error."""
    import localvault._late_sidecars

    out = tmp_path / "out"
    out.mkdir()
    make_png(out / "00001-7.png", color=41)
    vault.workspace.import_folder(out)
    (out / "00001-7.txt").write_text(a1111("a lighthouse at dusk", 7)["parameters"])
    new = make_png(out / "00002-8.png", color=42)
    monkeypatch.setattr(localvault._late_sidecars, "_FILL", "UPDATE no_such_table SET x = 1")  # (a fault)
    with caplog.at_level(logging.WARNING):
        again = vault.workspace.import_folder(out, mode="move")
    assert [Path(i.source) for i in again.imported] == [new] and not new.exists() and again.filled == {}
    assert any("could not be read into their assets" in r.getMessage() for r in caplog.records)


def test_an_unreadable_sidecar_is_warned_of_and_recorded(vault: Vault, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A sidecar the import may not read (written by another user, mode 600) was passed over in silence: the
    asset got the placeholders, and nothing said why. The import warns, and the asset's settings say so."""
    from conftest import without_dac_override

    from localvault import importer

    # Examined in this process: a worker process started by root regains the right to read any file.
    monkeypatch.setattr(importer, "PROCESS_MIN_FILES", 10**9)

    out = tmp_path / "out"
    out.mkdir()
    make_png(out / "00001-7.png")
    sidecar = out / "00001-7.txt"
    sidecar.write_text(a1111("a lighthouse at dusk", 7)["parameters"])
    sidecar.chmod(0)
    with without_dac_override(), caplog.at_level(logging.WARNING, logger="localvault"):
        result = vault.workspace.import_folder(out)
    asset = vault.workspace.get(result.imported[0].asset_id)
    assert asset.original_prompt == "" and asset.generation_settings["sidecar_unreadable"] == (
        "00001-7.txt: Permission denied")
    assert [r.getMessage() for r in caplog.records if "sidecar" in r.getMessage()] == [
        f"{out / '00001-7.png'}: its sidecar could not be read (00001-7.txt: Permission denied); what it says is "
        "not in the vault"]


def test_sizes_reported_are_those_of_the_bytes_imported(vault: Vault, tmp_path: Path) -> None:
    """A rig rewriting a file between the scan and its reading: the report gives what was stored, not what was listed."""
    rig_folder(tmp_path / "out")
    candidates = scan(tmp_path / "out").candidates
    grown = make_png(tmp_path / "out" / "00000.png", size=(200, 200), text_chunks=a1111("a red fox", 100), color=50)
    with Importer(vault.db, vault.files, USER) as running:
        result = running.import_candidates(candidates, total=len(candidates))
    sizes = {Path(i.source).name: i.size for i in result.imported}
    assert sizes["00000.png"] == grown.stat().st_size != next(c.size for c in candidates if c.path.endswith("00000.png"))
    stored = {i.asset_id: vault.workspace.get(i.asset_id).file_size_bytes for i in result.imported}
    assert result.bytes_imported == sum(stored.values()) == sum(sizes.values())


def test_a_link_swapped_in_between_the_scan_and_the_reading_is_not_followed(vault: Vault, tmp_path: Path) -> None:
    """The scan checks where a link leads, the reading opened the name again and followed whatever link was
    there by then: a file of the folder replaced by a link to an image elsewhere took that image in (a security
    review, reasoned). A link the scan approved is read at the file it led to then."""
    out = tmp_path / "out"
    for folder in (out / "kept", tmp_path / "elsewhere"):
        folder.mkdir(parents=True)
    inside = make_png(out / "a.png", text_chunks=a1111("a red fox", 1), color=1)
    secret = make_png(tmp_path / "elsewhere" / "private.png", text_chunks=a1111("private", 2), color=2)
    kept = make_png(out / "kept" / "b.png", text_chunks=a1111("a heron", 3), color=3)
    (out / "b.png").symlink_to("kept/b.png")
    candidates = scan(out).candidates
    inside.unlink()
    inside.symlink_to(secret)
    (out / "b.png").unlink()
    (out / "b.png").symlink_to(secret)
    with Importer(vault.db, vault.files, USER) as running:
        result = running.import_candidates(candidates, total=len(candidates))
    assert "symbolic link" in result.refused[str(inside)]
    (taken,) = result.imported
    assert taken.source == str(out / "b.png") and vault.workspace.get(taken.asset_id).original_prompt == "a heron"
    assert vault.workspace.find_sha256(hashlib.sha256(secret.read_bytes()).hexdigest()) is None
    assert kept.exists()


def test_options_fill_only_what_files_lack(vault: Vault, tmp_path: Path) -> None:
    rig_folder(tmp_path / "out")
    result = vault.workspace.import_folder(tmp_path / "out", model="my-model", prompt="fallback")
    models = {Path(i.source).name: vault.workspace.get(i.asset_id) for i in result.imported}
    assert models["00000.png"].model_used == "sdxl_base" and models["00000.png"].original_prompt == "a red fox"
    assert models["photo.jpg"].model_used == "my-model" and models["photo.jpg"].original_prompt == "fallback"


def test_cli_import_summary_and_json(tmp_path: Path) -> None:
    rig_folder(tmp_path / "out")
    (tmp_path / "out" / "garbage.png").write_bytes(b"nope")
    runner = CliRunner()
    base = ["--vault", str(tmp_path / "v")]
    assert runner.invoke(main, [*base, "init", "--user", USER]).exit_code == 0
    first = runner.invoke(main, [*base, "import", str(tmp_path / "out")])
    assert first.exit_code == 0, first.output
    assert "7 imported, 0 skipped as duplicates, 1 refused" in first.output
    assert "refused" in first.output and "garbage.png" in first.output
    second = runner.invoke(main, [*base, "import", str(tmp_path / "out"), "--json"])
    assert second.exit_code == 0, second.output
    report = json.loads(second.output)
    assert report["imported"] == [] and len(report["duplicates"]) == 7
    assert list(report["refused"]) == [str(tmp_path / "out" / "garbage.png")]
    third = runner.invoke(main, [*base, "import", str(tmp_path / "out")])
    assert "nothing new: every file not refused is already in this vault" in third.output  # (garbage.png is not)


def test_interrupted_import_leaves_no_temporary_files(vault: Vault, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    rig_folder(tmp_path / "out")
    real = Workspace.add_batch
    calls: list[int] = []

    def interrupted(self, entries, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(entries))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, entries, **kw)

    monkeypatch.setattr(Workspace, "add_batch", interrupted)
    candidates = scan(tmp_path / "out").candidates
    with Importer(vault.db, vault.files, vault.user_id, batch_size=2) as importer, \
            pytest.raises(KeyboardInterrupt) as stopped:
        importer.import_candidates(candidates, total=len(candidates))
    assert vault.workspace.count() == 2
    # what it committed before the stop, told (before: a bare KeyboardInterrupt, the CLI could not say how many)
    assert isinstance(stopped.value, ImportInterrupted) and len(stopped.value.report.imported) == 2
    leftovers = [n for _d, _s, names in os.walk(vault.root / WORKSPACE_BUCKET) for n in names if n.startswith(TEMP_PREFIX)]
    assert leftovers == []
    assert len(vault.verify().orphans) == 0


def test_streamed_files_small_memory_window_and_sidecars(vault: Vault, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Files over IN_MEMORY_BYTES take the streamed path; a tiny memory window still imports all, in order."""
    import hashlib

    from localvault import importer

    monkeypatch.setattr(importer, "IN_MEMORY_BYTES", 200)  # every test file is streamed
    monkeypatch.setattr(importer, "WINDOW_BYTES", 1)  # one chunk read ahead at a time
    paths = rig_folder(tmp_path / "out")
    (tmp_path / "out" / "photo.json").write_text(json.dumps({"prompt": "from a sidecar", "seed": 77}))
    result = vault.workspace.import_folder(tmp_path / "out")
    assert len(result.imported) == len(paths) and not result.refused
    assert [item.source for item in result.imported] == [str(p) for p in paths]  # (mtime, path) order kept
    photo = vault.workspace.get(result.imported[-1].asset_id)
    assert (photo.original_prompt, photo.generation_seed) == ("from a sidecar", 77)
    for item, path in zip(result.imported, paths, strict=True):
        stored = vault.root / "/".join(vault.locate(item.asset_id))
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_big_files_are_committed_in_batches_of_bytes_too(vault: Vault, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Files too big to be held in memory (videos) still cut a batch at BATCH_BYTES: a commit is what a Ctrl-C
    keeps and what --move may delete, so a folder of videos must not wait for 500 of them."""
    from localvault import importer

    paths = rig_folder(tmp_path / "out")
    monkeypatch.setattr(importer, "IN_MEMORY_BYTES", 200)  # every test file is streamed, as a video is
    monkeypatch.setattr(importer, "BATCH_BYTES", 1)  # each file fills a batch
    monkeypatch.setattr(importer, "CHUNK_FILES", 1)
    real = Workspace.add_batch
    commits: list[int] = []

    def counted(self, entries, **kw):  # type: ignore[no-untyped-def]
        commits.append(len(entries))
        return real(self, entries, **kw)

    monkeypatch.setattr(Workspace, "add_batch", counted)
    result = vault.workspace.import_folder(tmp_path / "out")
    assert len(result.imported) == len(paths) and sum(commits) == len(paths)
    assert commits == [1] * len(paths)


def test_a_batch_is_flushed_on_the_filesystem_of_the_users_folder(vault: Vault, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """One syncfs makes a big batch durable: it must flush the disk the files are on, the bucket's (which may
    be a disk of its own), not the vault's."""
    from localvault import files, workspace

    monkeypatch.setattr(workspace, "SYNCFS_MIN_FILES", 2)
    flushed: list[str] = []
    real = files.sync_filesystem
    monkeypatch.setattr(files, "sync_filesystem", lambda path: flushed.append(path) or real(path))
    rig_folder(tmp_path / "out")
    assert len(vault.workspace.import_folder(tmp_path / "out").imported) == 7
    assert flushed and set(flushed) == {str(vault.root / WORKSPACE_BUCKET / USER)}


def test_a_duplicates_copy_that_cannot_be_removed_does_not_refuse_a_committed_batch(
        vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The copies of files found to be duplicates are removed after the batch's commit; a failure there (a
    disk error) reported the whole committed batch as refused, to be tried again."""
    from localvault.errors import StorageError
    from localvault.files import FileStore
    from localvault.workspace import BatchEntry

    paths = rig_folder(tmp_path / "out")
    real_discard = FileStore.discard
    in_add_batch: list[bool] = []

    def discard_failing_after_commit(self: FileStore, staged: object) -> None:
        if in_add_batch:
            raise StorageError("cannot remove it: Input/output error")
        real_discard(self, staged)  # type: ignore[arg-type]

    real_add_batch = Workspace.add_batch

    def add_batch(self: Workspace, entries: list[BatchEntry], **kw: object) -> object:
        with Vault.open(vault.root) as other:  # another process adds the first file meanwhile: a duplicate now
            other.workspace.add(paths[0])
        in_add_batch.append(True)
        try:
            return real_add_batch(self, entries, **kw)  # type: ignore[arg-type]
        finally:
            in_add_batch.clear()

    monkeypatch.setattr(FileStore, "discard", discard_failing_after_commit)
    monkeypatch.setattr(Workspace, "add_batch", add_batch)
    with caplog.at_level(logging.WARNING, logger="localvault.workspace"):
        result = vault.workspace.import_folder(tmp_path / "out")
    assert (len(result.imported), result.duplicates, result.refused) == (len(paths) - 1, [str(paths[0])], {})
    assert "could not remove the temporary copy of a duplicate" in caplog.text


def test_a_folder_given_with_dot_dot_is_imported(vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'..' is refused inside a given path, not in the folder the user names (`localvault import ../out`)."""
    rig_folder(tmp_path / "out")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    result = vault.workspace.import_folder("../out")
    assert len(result.imported) == 7 and not result.refused



def test_add_from_python_reads_what_the_file_carries_like_the_cli(tmp_path: Path) -> None:
    first = make_png(tmp_path / "a.png", text_chunks=a1111("a red fox", 4242), color=1)
    second = make_png(tmp_path / "b.png", text_chunks=a1111("a blue heron", 77, model="flux"), color=2)
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        added = vault.workspace.add(first)
        assert (added.original_prompt, added.generation_seed, added.model_used) == ("a red fox", 4242, "sdxl_base")
        assert added.generation_settings["negative_prompt"] == "blurry" and added.generation_settings["steps"] == 20
        kept = vault.library.add(second, seed=1)  # what is given wins; the rest comes from the file
        assert (kept.original_prompt, kept.generation_seed, kept.model_used) == ("a blue heron", 1, "flux")
        plain = vault.library.add(make_jpeg(tmp_path / "c.jpg", color=3))
        assert (plain.original_prompt, plain.generation_seed, plain.model_used) == ("", 0, "unknown")


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_parameters_hidden_in_the_pixels_are_imported(vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      streamed: bool) -> None:
    """A PNG whose chunks were stripped (a re-save, an upload) keeps its parameters only in its pixels' low bits
    (stealth pnginfo): it came in with the placeholders; now with what they hold."""
    from mediafiles import make_stealth_png

    from localvault import importer

    if streamed:
        monkeypatch.setattr(importer, "IN_MEMORY_BYTES", 200)
    (tmp_path / "out").mkdir()
    make_stealth_png(tmp_path / "out" / "stripped.png", a1111("a hidden fox", 31337)["parameters"], compressed=True)
    result = vault.workspace.import_folder(tmp_path / "out")
    asset = vault.workspace.get(result.imported[0].asset_id)
    assert (asset.original_prompt, asset.generation_seed, asset.model_used) == ("a hidden fox", 31337, "sdxl_base")
    assert asset.generation_settings["metadata_source"] == "a1111"
    assert asset.generation_settings["negative_prompt"] == "blurry" and asset.generation_settings["steps"] == 20
    added = vault.workspace.add(make_stealth_png(tmp_path / "added.png", a1111("a hidden heron", 5)["parameters"],
                                                 mode="rgb", seed=1))
    assert (added.original_prompt, added.generation_seed) == ("a hidden heron", 5)


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_a_file_already_taken_is_not_decoded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   streamed: bool) -> None:
    """A review's find: examine() read the metadata before it knew the file was one already taken, so every
    import of a folder again decoded the pixels of each stripped PNG or WebP (50-130 ms a 2048² WebP)."""
    from mediafiles import make_stealth_png

    from localvault import _examine, _intake
    from localvault.metadata import stealth

    path = make_stealth_png(tmp_path / "stripped.png", a1111("a hidden fox", 31337)["parameters"])
    candidate, _ = _intake.check_path(path, tmp_path)
    assert candidate is not None
    in_memory = 200 if streamed else 10**9
    fresh = _examine.examine(candidate, set(), in_memory_bytes=in_memory)
    assert fresh.info.seed == 31337 and fresh.values is not None
    monkeypatch.setattr(stealth, "hidden_texts", lambda f: pytest.fail("pixels decoded for a file already taken"))
    again = _examine.examine(candidate, {fresh.sha256}, in_memory_bytes=in_memory)
    assert again.sha256 == fresh.sha256 and again.values is None


def test_settings_just_under_the_limit_are_trimmed_never_refuse_the_file(vault: Vault, tmp_path: Path) -> None:
    """Before: the reader trimmed settings to 1 MiB, then the negative prompt and metadata source stored beside
    them pushed the row over it, and the image itself was refused."""
    from localvault.models import MAX_SETTINGS_BYTES

    out = tmp_path / "out"
    out.mkdir()
    make_png(out / "img.png")
    pad = MAX_SETTINGS_BYTES - len(json.dumps({"big": "", "sidecar": "img.json"}).encode())
    (out / "img.json").write_text(json.dumps({"prompt": "a cat", "big": "x" * pad}))
    report = vault.workspace.import_folder(out)
    assert not report.refused and len(report.imported) == 1
    [asset] = vault.workspace.list().items
    assert asset.original_prompt == "a cat" and "big" not in asset.generation_settings
    assert asset.generation_settings["metadata_source"] == "sidecar"


def test_cli_import_prints_a_file_name_with_a_line_break_on_one_line(tmp_path: Path) -> None:
    """A file named "bad\\n  refused x.png" printed raw made a second, fake "refused" line in the report."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "bad\n  refused x.png").write_bytes(b"junk")
    base = ["--vault", str(tmp_path / "v")]
    runner = CliRunner()
    assert runner.invoke(main, [*base, "init", "--user", USER]).exit_code == 0
    result = runner.invoke(main, [*base, "import", str(out), "--no-progress"])
    refusals = [line for line in result.output.splitlines() if "refused" in line and "imported" not in line]
    assert refusals == [f"  refused {out}/bad\\n  refused x.png: is not a JPEG, PNG, WebP or MP4 file (its bytes say "
                        "otherwise)"], result.output


def test_a_prompt_cut_short_and_a_workflow_too_big_to_keep_are_said_in_the_settings(vault: Vault,
                                                                                      tmp_path: Path) -> None:
    """A 140,000-character prompt came in cut to 65,536 characters without a word, and a file holding only a
    350 KB ComfyUI workflow (a real power user's) came in as metadata source "none" (a rig user's journey).
    Two such workflows of one run, their seeds of other lengths, still make one job."""
    out = tmp_path / "out"
    out.mkdir()
    make_png(out / "long.png", text_chunks={"parameters": "word, " * 20_000 + "END\nSteps: 20, Sampler: Euler, Seed: 1"})
    for n, seed in enumerate((7, 123456789012)):
        nodes = [{"id": i, "type": "Note", "widgets_values": ["x" * 1000]} for i in range(300)]
        nodes.append({"id": 900, "type": "KSampler", "widgets_values": [seed, "fixed", 20, 7, "euler", "normal", 1]})
        make_png(out / f"big{n}.png", color=n + 1, text_chunks={"workflow": json.dumps({"nodes": nodes, "links": []})})
        os.utime(out / f"big{n}.png", (1_700_000_000 + n,) * 2)
    found = {Path(i.source).name: i for i in vault.workspace.import_folder(out).imported}
    long = vault.workspace.get(found["long.png"].asset_id)
    assert len(long.original_prompt or "") == 65_536
    assert long.generation_settings["prompt_cut_from_chars"] == len("word, " * 20_000 + "END")
    big = [vault.workspace.get(found[f"big{n}.png"].asset_id) for n in range(2)]
    assert all(a.generation_settings["metadata_source"] == "comfyui" for a in big)
    assert all(a.generation_settings["comfyui_workflow_not_kept_bytes"] > 256 * 1024 for a in big)
    assert big[0].generation_settings["comfyui_workflow_not_kept_bytes"] != big[1].generation_settings[
        "comfyui_workflow_not_kept_bytes"]
    assert big[0].job_id == big[1].job_id
