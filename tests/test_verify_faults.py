"""verify and verify --repair facing a disk that is not there, files it cannot read, odd names and a delete
in another process.

Real files throughout; permissions are made real for root by dropping CAP_DAC_OVERRIDE (``without_dac_override``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import USER_A, USER_B, without_dac_override, write_media

from localvault import Vault
from localvault.cli import main
from localvault.errors import NotFoundError, StorageError
from localvault.files import LIBRARY_BUCKET, WORKSPACE_BUCKET


def _unmount(vault: Vault, bucket: str) -> Path:
    """Emulate a bucket's disk not mounted: its files go aside, its folder stays, empty (a bare mount point)."""
    folder = vault.root / bucket
    aside = vault.root.parent / f"{bucket}-disk"
    os.rename(folder, aside)
    folder.mkdir()
    return aside


def _mount(vault: Vault, bucket: str, aside: Path) -> None:
    os.rmdir(vault.root / bucket)
    os.rename(aside, vault.root / bucket)


# ------------------------------------------------------------- a disk not mounted


def test_repair_refuses_when_a_bucket_folder_is_there_but_empty(vault: Vault, make_image):
    """Before: an unmounted mount point passed the check, and repair deleted every workspace row."""
    assets = [vault.workspace.add(make_image(seed=i), prompt=f"prompt {i}") for i in range(3)]
    kept = vault.library.add(make_image(seed=9))
    aside = _unmount(vault, WORKSPACE_BUCKET)
    with pytest.raises(StorageError, match=f"{USER_A} is missing, but 3 assets .*is the disk mounted"):
        vault.verify(repair=True)
    assert vault.workspace.count() == 3 and vault.library.get(kept.id)
    assert not any((vault.root / "recovered").rglob("*"))  # nothing moved either
    assert len(vault.verify().missing) == 3  # reported, not repaired
    _mount(vault, WORKSPACE_BUCKET, aside)
    assert vault.verify().clean and all(vault.workspace.get(a.id).original_prompt == f"prompt {i}" for i, a in enumerate(assets))


def test_repair_refuses_when_one_users_folder_is_missing(vault: Vault, other_user_vault: Vault, make_image):
    """Another user's files there are no proof that this user's folder is not on a disk gone missing."""
    vault.workspace.add(make_image(seed=1))
    mine = other_user_vault.workspace.add(make_image(seed=2))
    shutil.rmtree(vault.root / WORKSPACE_BUCKET / USER_B)
    with pytest.raises(StorageError, match=f"{USER_B} is missing, but 1 asset has its file in it"):
        vault.verify(repair=True)
    assert other_user_vault.workspace.get(mine.id)
    (vault.root / WORKSPACE_BUCKET / USER_B).mkdir()  # the way out the message gives: the files are gone for good
    report = vault.verify(repair=True)
    assert report.repaired == [f"{WORKSPACE_BUCKET}/{mine.temp_storage_path}"] and report.clean
    with pytest.raises(NotFoundError):
        other_user_vault.workspace.get(mine.id)


def test_repair_of_one_lost_file_among_others_still_runs(vault: Vault, make_image):
    lost = vault.workspace.add(make_image(seed=1))
    other = vault.workspace.add(make_image(seed=2))
    os.unlink(vault.workspace.file_path(lost))
    os.unlink(vault.workspace.file_path(other))  # the bucket holds no file at all now, but its folders are there
    report = vault.verify(repair=True)
    assert sorted(report.repaired) == sorted(f"{WORKSPACE_BUCKET}/{a.temp_storage_path}" for a in (lost, other))
    assert report.clean and vault.workspace.count() == 0


def test_repair_refuses_when_the_library_bucket_is_empty(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    kept = vault.library.save(asset.id)
    _unmount(vault, LIBRARY_BUCKET)
    with pytest.raises(StorageError, match="is the disk mounted"):
        vault.verify(repair=True)  # would restore the library file from its twin onto the bare mount point
    assert not any((vault.root / LIBRARY_BUCKET).iterdir()) and vault.library.get(kept.id)


# ------------------------------------------------------------- files it cannot read


def test_quick_verify_calls_a_file_it_cannot_look_at_unreadable_and_repair_keeps_it(vault: Vault, make_image):
    """Before: --quick asked os.path.isfile (False on EACCES), called the file missing, and --repair deleted
    the workspace row, the only record of its prompt."""
    asset = vault.workspace.add(make_image(seed=1), prompt="the only record of this prompt")
    path = Path(vault.workspace.file_path(asset))
    path.parent.chmod(0o644)  # listable, not searchable: a stat of the file in it fails with EACCES
    try:
        with without_dac_override():
            report = vault.verify(check_hashes=False)
            repaired = vault.verify(repair=True, check_hashes=False)
    finally:
        path.parent.chmod(0o755)
    entry = f"{WORKSPACE_BUCKET}/{asset.temp_storage_path}"
    assert report.unreadable == [entry] and report.missing == [] and report.asset_ids[entry] == asset.id
    assert repaired.unreadable == [entry] and repaired.repaired == [] and not repaired.clean
    assert vault.workspace.get(asset.id).original_prompt == "the only record of this prompt" and path.is_file()
    assert vault.verify(check_hashes=False).clean


# ------------------------------------------------------------- odd names


def test_a_file_whose_name_is_not_utf8_is_an_orphan_and_repair_moves_it(vault: Vault, make_image):
    """Before: a UnicodeEncodeError from the row lookup, and neither verify nor repair could run."""
    vault.workspace.add(make_image(seed=1))
    folder = vault.root / LIBRARY_BUCKET / USER_A
    folder.mkdir(parents=True, exist_ok=True)
    name = os.fsdecode(b"bad\xff.png")  # copied in from another system
    data = make_image(seed=2).read_bytes()
    (folder / name).write_bytes(data)
    entry = f"{LIBRARY_BUCKET}/{USER_A}/{name}"
    assert vault.verify().orphans == [entry]
    assert vault.verify(check_hashes=False).orphans == [entry]
    repaired = vault.verify(repair=True)
    assert repaired.orphans == [entry] and repaired.repaired == [entry] and repaired.clean
    moved = Path(repaired.recovered[0])
    assert moved == vault.root / "recovered" / LIBRARY_BUCKET / USER_A / name and moved.read_bytes() == data
    assert not (folder / name).exists() and vault.verify().clean


def test_cli_verify_prints_a_name_that_is_not_utf8(vault: Vault, make_image):
    folder = vault.root / WORKSPACE_BUCKET / USER_A
    folder.mkdir(parents=True, exist_ok=True)
    name = os.fsdecode(b"bad\xff.png")
    (folder / name).write_bytes(make_image(seed=2).read_bytes())
    root = str(vault.root)
    vault.close()
    found = CliRunner().invoke(main, ["--vault", root, "verify", "--json"])
    assert found.exit_code == 1 and json.loads(found.stdout)["orphans"] == [f"{WORKSPACE_BUCKET}/{USER_A}/{name}"]
    repaired = CliRunner().invoke(main, ["--vault", root, "verify", "--repair"])
    assert repaired.exit_code == 0 and "moved to: " in repaired.stdout and "vault is clean" in repaired.stdout


# ------------------------------------------------------------- a folder it cannot list


def test_verify_reports_a_folder_it_cannot_list_and_goes_on(vault: Vault, make_image):
    """Before: the PermissionError of the listing stopped verify, and nothing at all was reported."""
    locked = vault.workspace.add(make_image(seed=1))
    fine = vault.workspace.add(make_image(seed=2))
    orphan = vault.root / LIBRARY_BUCKET / USER_A / "orphan.png"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(make_image(seed=3).read_bytes())
    folder = Path(vault.workspace.file_path(locked)).parent
    folder.chmod(0)
    root = str(vault.root)
    try:
        with without_dac_override():
            report = vault.verify()
            quick = vault.verify(check_hashes=False, repair=True)
            repaired = vault.verify(repair=True)
            printed = CliRunner().invoke(main, ["--vault", root, "verify"])
    finally:
        folder.chmod(0o755)
    listed = f"{WORKSPACE_BUCKET}/{os.path.dirname(locked.temp_storage_path)}/"
    entry = f"{WORKSPACE_BUCKET}/{locked.temp_storage_path}"
    assert report.unreadable_folders == [listed] and report.unreadable == [entry] and not report.clean
    assert report.orphans == [f"{LIBRARY_BUCKET}/{USER_A}/orphan.png"]  # the rest was checked
    assert quick.unreadable == [entry] and quick.missing == [] and quick.repaired == quick.orphans
    assert repaired.unreadable_folders == [listed] and repaired.unreadable == [entry] and not repaired.clean
    assert vault.workspace.get(locked.id) and vault.workspace.get(fine.id)  # never touched
    assert printed.exit_code == 1 and f"unreadable folder: {listed}" in printed.stdout
    assert vault.verify().clean


def test_repair_keeps_the_rows_of_a_folder_it_cannot_list(vault: Vault, make_image):
    """A folder that can be searched but not listed: a file that looks missing in it is not called missing
    (what is in there cannot be told), and repair keeps its row."""
    asset = vault.workspace.add(make_image(seed=1), prompt="kept")
    path = Path(vault.workspace.file_path(asset))
    os.unlink(path)
    path.parent.chmod(0o311)
    try:
        with without_dac_override():
            repaired = vault.verify(repair=True)
    finally:
        path.parent.chmod(0o755)
    entry = f"{WORKSPACE_BUCKET}/{asset.temp_storage_path}"
    assert repaired.unreadable == [entry] and repaired.missing == [] and repaired.asset_ids[entry] == asset.id
    assert vault.workspace.get(asset.id).original_prompt == "kept" and not repaired.clean


# ------------------------------------------------------------- a named pipe for a file


def _pipe_for_file(vault: Vault, path: str) -> None:
    os.unlink(path)
    os.mkfifo(path)


@pytest.mark.timeout(20)
def test_verify_calls_a_named_pipe_unreadable_and_never_waits_on_it(vault: Vault, make_image):
    """Before: hashing opened the pipe for reading, which waits for a writer, for ever."""
    asset = vault.workspace.add(make_image(seed=1))
    kept = vault.library.save(asset.id)  # a twin: repair must not restore over the pipe either
    path = vault.workspace.file_path(asset)
    _pipe_for_file(vault, path)
    entry = f"{WORKSPACE_BUCKET}/{asset.temp_storage_path}"
    for check_hashes in (True, False):
        report = vault.verify(check_hashes=check_hashes)
        assert report.unreadable == [entry] and report.missing == [] and report.asset_ids[entry] == asset.id
        repaired = vault.verify(repair=True, check_hashes=check_hashes)
        assert repaired.unreadable == [entry] and repaired.repaired == [] and not repaired.clean
    assert stat.S_ISFIFO(os.stat(path).st_mode) and vault.workspace.get(asset.id) and vault.library.get(kept.id)
    with pytest.raises(OSError, match="not a regular file"):
        vault.files.sha256(WORKSPACE_BUCKET, asset.temp_storage_path)
    with pytest.raises(StorageError, match=f"cannot read {WORKSPACE_BUCKET}/.*not a regular file.*verify"):
        vault.export(asset.id, vault.root.parent / "out.png")  # (once: 'cannot write out.png')


@pytest.mark.timeout(20)
def test_a_named_pipe_is_no_twin_to_restore_from(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    kept = vault.library.save(asset.id)
    _pipe_for_file(vault, vault.workspace.file_path(asset))
    os.unlink(vault.library.file_path(kept))
    repaired = vault.verify(repair=True)
    assert repaired.unrepairable == [f"{LIBRARY_BUCKET}/{kept.storage_path}"]
    assert not os.path.exists(vault.library.file_path(kept))


def test_a_folder_where_a_file_should_be_is_still_missing(vault: Vault, make_image):
    asset = vault.workspace.add(make_image(seed=1))
    path = vault.workspace.file_path(asset)
    os.unlink(path)
    os.mkdir(path)
    entry = f"{WORKSPACE_BUCKET}/{asset.temp_storage_path}"
    assert vault.verify().missing == [entry] and vault.verify(check_hashes=False).missing == [entry]


@pytest.mark.timeout(20)
def test_a_durable_copy_of_a_named_pipe_is_refused_not_waited_on(tmp_path: Path):
    """repair copies a file without a row to recovered/ on another disk (copy_durably): a named pipe there
    would have been opened for reading, which waits for a writer, for ever."""
    from localvault._disk import NotRegularFileError
    from localvault._durable import copy_durably

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(NotRegularFileError):
        copy_durably(str(tmp_path / "pipe.png"), str(tmp_path / "copy.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.png"]


@pytest.mark.parametrize("drained", [False, True])
def test_repair_beside_a_delete_in_another_process_neither_fails_nor_brings_the_file_back(
        vault: Vault, make_image, monkeypatch: pytest.MonkeyPatch, drained: bool):
    """Another process deletes an asset while verify --repair runs: its row goes (and its file is queued) after
    verify read the rows, so the file looks like an orphan; its drain may remove the file before repair takes
    the lock. Before: repair stopped with 'cannot move … No such file' (drained), or moved the deleted file to
    recovered/ (not yet drained). The other process's steps run from hooks at those moments."""
    import localvault.verify as verify_module
    from localvault import pending

    asset = vault.workspace.add(make_image(seed=1))
    where = vault.workspace.file_path(asset)  # (once deleted, file_path says it is not found)
    other = Vault.open(vault.root, auto_cleanup=False)
    rows, drop_settled = verify_module._rows, verify_module._drop_settled

    def rows_then_other_deletes(db: Any) -> Iterator[Any]:
        yield from rows(db)
        with other.db.write() as conn:  # Workspace.delete's transaction: the row goes, the file is queued
            path = conn.execute("DELETE FROM workspace_assets WHERE id = ? RETURNING temp_storage_path",
                                (asset.id,)).fetchone()[0]
            pending.queue_delete(conn, WORKSPACE_BUCKET, path)

    def re_check_then_other_drains(*args: Any) -> None:
        drop_settled(*args)
        if drained:
            pending.drain(other.db, other.files)

    monkeypatch.setattr(verify_module, "_rows", rows_then_other_deletes)
    monkeypatch.setattr(verify_module, "_drop_settled", re_check_then_other_drains)
    report = vault.verify(repair=True)
    other.close()
    assert report.recovered == [] and [files for _d, _s, files in os.walk(vault.root / "recovered") if files] == []
    monkeypatch.undo()
    pending.drain(vault.db, vault.files)
    assert vault.verify().clean and not os.path.exists(where)


# ------------------------------------------------------------- hashing on several threads


def test_verify_pairs_each_problem_with_its_own_row_among_many_hashed_at_once(vault: Vault, make_image):
    """Files are hashed several at a time, a window ahead: each result must still land on its own row."""
    from localvault import verify as verify_module

    assets = [vault.library.add(make_image(seed=i)) for i in range(3 * verify_module.HASH_WINDOW + 5)]
    damaged, removed = assets[7::11], assets[13::17]
    for asset in damaged:
        with open(vault.library.file_path(asset), "r+b") as file:
            file.seek(-1, os.SEEK_END)
            last = file.read(1)[0]
            file.seek(-1, os.SEEK_END)
            file.write(bytes([last ^ 0xFF]))
    for asset in removed:
        os.unlink(vault.library.file_path(asset))
    report = vault.verify()
    entry = {a.id: f"{LIBRARY_BUCKET}/{a.storage_path}" for a in assets}
    assert report.checked == len(assets)
    assert sorted(report.mismatched) == sorted(entry[a.id] for a in damaged if a not in removed)
    assert sorted(report.missing) == sorted(entry[a.id] for a in removed)
    assert report.asset_ids == {entry[a.id]: a.id for a in damaged + removed}


def test_verify_hashes_files_on_several_threads(vault: Vault, make_image, monkeypatch):
    """Before: one file at a time, so a million files on a cold disk took ~70 minutes on one core's pace."""
    import threading
    import time

    from localvault.files import FileStore

    for i in range(24):
        vault.library.add(make_image(seed=i))
    hashing, peak, lock, hash_file = 0, 0, threading.Lock(), FileStore.sha256

    def slow_sha256(self: FileStore, bucket: str, relative: str) -> str:
        nonlocal hashing, peak
        with lock:
            hashing += 1
            peak = max(peak, hashing)
        time.sleep(0.02)  # a cold disk's read
        try:
            return hash_file(self, bucket, relative)
        finally:
            with lock:
                hashing -= 1

    monkeypatch.setattr(FileStore, "sha256", slow_sha256)
    report = vault.verify()
    assert report.clean and report.checked == 24
    assert peak >= 2


def test_a_verify_cut_short_does_not_hash_the_rest_of_its_window(vault: Vault, make_image, monkeypatch):
    """Before: the thread pool's exit waited for every file queued in the window: a Ctrl-C (here a progress
    callback's error) still read up to 64 files, each perhaps a video of hundreds of MB."""
    import threading
    import time

    from localvault import verify as verify_module
    from localvault.files import FileStore

    for i in range(verify_module.HASH_WINDOW + 8):
        vault.library.add(make_image(seed=i))
    hashed, lock, hash_file = [0], threading.Lock(), FileStore.sha256

    def slow_sha256(self: FileStore, bucket: str, relative: str) -> str:
        time.sleep(0.05)
        with lock:
            hashed[0] += 1
        return hash_file(self, bucket, relative)

    def stop_at_the_first(event: Any) -> None:
        if event.advance:
            raise KeyboardInterrupt

    monkeypatch.setattr(FileStore, "sha256", slow_sha256)
    with pytest.raises(KeyboardInterrupt):
        vault.verify(progress=stop_at_the_first)
    assert hashed[0] <= 2 * verify_module.HASH_THREADS, hashed[0]


def test_a_damaged_database_is_reported_by_verify_and_by_the_cli_in_one_line(tmp_path: Path) -> None:
    """One damaged index page (a bad sector, a torn copy): verify said 'vault is clean', reads and writes that met
    the page raised a raw sqlite3.DatabaseError, and the CLI printed a traceback (an embedding journey)."""
    import sqlite3

    from localvault.errors import VaultCorruptError

    root = tmp_path / "v"
    with Vault.create(root, user_id=USER_A) as vault:
        ids = [vault.library.add(write_media(tmp_path / "src", "png", n), title=f"t{n}").id for n in range(150)]
    conn = sqlite3.connect(root / "vault.db")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    (index_root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'user_library_favorite'").fetchone()
    conn.close()
    with open(root / "vault.db", "r+b") as db_file:  # the index's b-tree page header: garbage
        db_file.seek((index_root - 1) * page_size)
        db_file.write(b"\x0d\xff\xff\xff\x00\x00\xff\xff")
    with Vault.open(root) as vault:
        report = vault.verify()
        assert not report.clean and report.database_damage and "Page" in report.database_damage[0]
        with pytest.raises(VaultCorruptError, match="restore it from a backup"):
            vault.library.update(ids[0], favorite=True)
    listed = CliRunner().invoke(main, ["--vault", str(root), "ls", "--favorite"])
    assert listed.exit_code == 6 and "is not a readable localvault database" in listed.output
    assert "Traceback" not in listed.output
    checked = CliRunner().invoke(main, ["--vault", str(root), "verify"])
    assert checked.exit_code == 1 and "database damaged:" in checked.output and "vault is clean" not in checked.output


def test_a_check_that_cannot_run_is_no_verdict_of_damage(tmp_path: Path) -> None:
    """Any error of SQLite's check (interrupted, locked, an I/O error) was reported as damage, and the CLI said to
    restore vault.db from a backup, which would lose what the sound one holds (a review)."""
    with Vault.create(tmp_path / "v", user_id=USER_A) as vault:
        vault.collections.create("kept")
        vault.db.conn.set_progress_handler(lambda: 1, 500)  # SQLITE_INTERRUPT past 500 steps, as interrupt() does
        try:
            with pytest.raises(StorageError, match="cannot check"):
                vault.verify()
        finally:
            vault.db.conn.set_progress_handler(None, 1)
        assert vault.verify().clean


def _scribble_root_pages(path: Path, table: str) -> None:
    """Garbage in the b-tree page headers of ``table``'s root page and its indexes' (a bad sector)."""
    import sqlite3

    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root_pages = [row[0] for row in conn.execute("SELECT rootpage FROM sqlite_master WHERE tbl_name = ? AND rootpage",
                                                 (table,))]
    conn.close()
    with open(path, "r+b") as db_file:
        for root_page in root_pages:
            db_file.seek((root_page - 1) * page_size)
            db_file.write(b"\x0d\xff\xff\xff\x00\x00\xff\xff")


def test_reads_that_meet_a_damaged_page_raise_vault_corrupt_error(tmp_path: Path) -> None:
    """A public read that met a damaged page raised sqlite3.DatabaseError, which an app catching LocalVaultError
    missed; every public call now says the vault is damaged, and what to do."""
    from localvault.errors import LocalVaultError, VaultCorruptError
    from localvault.sync import status as sync_status

    root = tmp_path / "v"
    with Vault.create(root, user_id=USER_A) as vault:
        album = vault.collections.create("album")
        ids = [vault.library.add(write_media(tmp_path / "src", "png", n), title=f"t{n}", collection=album.id).id
               for n in range(150)]
        staged = [vault.workspace.add(write_media(tmp_path / "src", "png", 1000 + n)).id for n in range(150)]
    for name in ("user_library", "workspace_assets", "user_collections", "sync_outbox"):
        _scribble_root_pages(root / "vault.db", name)
    reads: dict[str, Any] = {
        "library.list": lambda v: v.library.list(),
        "library.get": lambda v: v.library.get(ids[-1]),
        "library.count": lambda v: v.library.count(),
        "workspace.list": lambda v: v.workspace.list(),
        "workspace.get": lambda v: v.workspace.get(staged[-1]),
        "collections.list": lambda v: v.collections.list(),
        "vault.get": lambda v: v.get(ids[0]),
        "vault.resolve_id": lambda v: v.resolve_id(ids[1][:8]),
        "sync.status": lambda v: sync_status(v, check_online=False),
    }
    with pytest.raises(VaultCorruptError, match="restore it from a backup"):
        Vault.open(root)  # (its clean-up of expired assets meets the damage)
    with Vault.open(root, auto_cleanup=False) as vault:
        for what, read in reads.items():
            try:
                read(vault)
            except LocalVaultError as exc:
                assert isinstance(exc, VaultCorruptError), (what, exc)
                assert "restore it from a backup" in str(exc), (what, exc)
            else:
                raise AssertionError(f"{what} read a damaged table without an error")
