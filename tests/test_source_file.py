"""The name of the file an asset came from, kept in its settings (``source_file``): a rig user who imported
``~/ComfyUI/output`` got assets named only by UUID, and ``localvault show`` could not say which file each was."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from conftest import USER_A
from mediafiles import make_png
from test_import import a1111, take_by
from test_watch import Recorder, wait_for

from localvault import Vault
from localvault.cli import main
from localvault.models import MAX_SETTINGS_BYTES
from localvault.watch import Watcher

USER = "0e0e0e0e-0000-4000-8000-00000000000e"
A1111_TEXT = "a red fox in snow\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 4242, Size: 64x64, Model: sdxl"


@pytest.fixture(params=["threads", "processes"])
def intake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """An import test runs twice: as small imports do (threads), and as big ones do (worker processes)."""
    return take_by(str(request.param), monkeypatch)


def names(vault: Vault) -> dict[str, str]:
    """source_file -> asset id, of every workspace asset (each must have one)."""
    return {a.generation_settings["source_file"]: a.id for a in vault.workspace.list(limit=100).items}


def stored_settings(vault: Vault, asset_id: str) -> bytes:
    """The settings as SQLite holds them, as bytes (text that is not UTF-8 would not come back as str)."""
    conn = sqlite3.connect(vault.db.path)
    conn.text_factory = bytes
    try:
        return conn.execute("SELECT generation_settings FROM workspace_assets WHERE id = ?", (asset_id,)).fetchone()[0]
    finally:
        conn.close()



def write_by_rename(folder: Path, name: str, data: bytes) -> None:
    (folder / f"{name}.tmp").write_bytes(data)
    os.rename(folder / f"{name}.tmp", folder / name)


# ---------------------------------------------------------------- import


def test_an_import_keeps_each_files_path_relative_to_the_folder(vault: Vault, tmp_path: Path, intake: str) -> None:
    """Relative to the folder imported, "/" between the parts; a link by its own name, not its target's; never
    the user's home path (the settings go to the server)."""
    out = tmp_path / "ComfyUI" / "output"
    (out / "2026-11-29").mkdir(parents=True)
    (out / "store").mkdir()
    make_png(out / "2026-11-29" / "ComfyUI_00012_.png", color=1, text_chunks=a1111("a red fox", 12))
    make_png(out / "ComfyUI_00001_.png", color=2)
    make_png(out / "store" / "real.png", color=3)
    (out / "2026-11-29" / "latest.png").symlink_to(out / "store" / "real.png")
    (tmp_path / "link-to-output").symlink_to(out)
    result = vault.workspace.import_folder(tmp_path / "link-to-output", recursive=True)  # (reached by a link)
    assert not result.refused and len(result.imported) == 3 and len(result.duplicates) == 1  # (real.png: the link)
    kept = names(vault)
    assert set(kept) == {"2026-11-29/ComfyUI_00012_.png", "ComfyUI_00001_.png", "2026-11-29/latest.png"}
    fox = vault.workspace.get(kept["2026-11-29/ComfyUI_00012_.png"])
    assert (fox.original_prompt, fox.generation_seed) == ("a red fox", 12)
    assert fox.generation_settings["metadata_source"] == "a1111" and fox.generation_settings["steps"] == 20
    assert vault.workspace.get(kept["ComfyUI_00001_.png"]).generation_settings == {"source_file": "ComfyUI_00001_.png"}
    for asset_id in kept.values():
        assert str(tmp_path).encode() not in stored_settings(vault, asset_id)


def test_files_of_one_run_are_still_one_job(vault: Vault, tmp_path: Path, intake: str) -> None:
    """Each file's name is its own: grouping files into jobs compares the rest of their settings."""
    out = tmp_path / "out"
    out.mkdir()
    for i in range(3):
        make_png(out / f"0000{i}.png", color=i + 1, text_chunks=a1111("a lighthouse at dusk", 100 + i))
        os.utime(out / f"0000{i}.png", (1_700_000_000 + i,) * 2)
    result = vault.workspace.import_folder(out)
    assert len(result.imported) == 3 and len({i.job_id for i in result.imported}) == 1
    assert sorted(i.asset_index for i in result.imported) == [0, 1, 2]
    assert set(names(vault)) == {"00000.png", "00001.png", "00002.png"}


def test_an_import_again_fills_from_a_sidecar_and_keeps_the_first_name(vault: Vault, tmp_path: Path,
                                                                       intake: str) -> None:
    """A file taken without metadata has its name as its settings; a sidecar found beside it by a later
    import (of its sub-folder: another relative name) still fills it, and its name stays the first one."""
    day = tmp_path / "out" / "2026-11-29"
    day.mkdir(parents=True)
    bare = make_png(day / "00001-7.png", color=41)
    first = vault.workspace.import_folder(tmp_path / "out", recursive=True)
    asset_id = first.imported[0].asset_id
    assert vault.workspace.get(asset_id).generation_settings == {"source_file": "2026-11-29/00001-7.png"}
    (day / "00001-7.txt").write_text(a1111("a lighthouse at dusk", 7)["parameters"])
    again = vault.workspace.import_folder(day)
    assert again.duplicates == [str(bare)] and again.filled == {str(bare): asset_id}
    asset = vault.workspace.get(asset_id)
    assert (asset.generation_seed, asset.original_prompt) == (7, "a lighthouse at dusk")
    assert asset.generation_settings["sidecar"] == "00001-7.txt"
    assert asset.generation_settings["source_file"] == "2026-11-29/00001-7.png"


def test_settings_at_the_size_limit_are_kept_without_the_name(vault: Vault, tmp_path: Path, intake: str) -> None:
    """Settings just under 1 MiB: the name would take them over, and the file be refused; it is left out."""
    out = tmp_path / "out"
    out.mkdir()
    make_png(out / "img.png")
    make_png(out / "small.png", color=5, text_chunks=a1111("a small one", 5))
    # The reader keeps room for a negative prompt and the metadata source; the rest, the sidecar fills.
    room = MAX_SETTINGS_BYTES - len(json.dumps({"negative_prompt": "", "metadata_source": "sidecar"}).encode())
    pad = room - len(json.dumps({"big": "", "sidecar": "img.json"}).encode())
    (out / "img.json").write_text(json.dumps({"prompt": "a cat", "big": "x" * pad}))
    report = vault.workspace.import_folder(out)
    assert not report.refused and len(report.imported) == 2
    by_name = {Path(i.source).name: vault.workspace.get(i.asset_id) for i in report.imported}
    big = by_name["img.png"]
    assert big.original_prompt == "a cat" and big.generation_settings["big"] == "x" * pad
    assert "source_file" not in big.generation_settings
    assert len(json.dumps({**big.generation_settings, "source_file": "img.png"}).encode()) > MAX_SETTINGS_BYTES
    assert by_name["small.png"].generation_settings["source_file"] == "small.png"
    vault.workspace.delete(big.id)
    added = vault.workspace.add(out / "img.png")  # (add too)
    assert added.generation_settings["big"] == "x" * pad and "source_file" not in added.generation_settings


def test_a_name_that_is_not_utf8_is_kept_as_valid_text(vault: Vault, tmp_path: Path, intake: str) -> None:
    """Linux allows any bytes in a name (Python holds the others as lone surrogates): its bytes that are not
    UTF-8 become U+FFFD, so that SQLite holds UTF-8 text and PostgreSQL's jsonb takes it."""
    out = tmp_path / "out"
    folder = out / os.fsdecode(b"d\xffy")
    folder.mkdir(parents=True)
    make_png(folder / os.fsdecode(b"caf\xe9-\xc3\xa9.png"), color=7)
    result = vault.workspace.import_folder(out, recursive=True)
    assert not result.refused and len(result.imported) == 1
    asset = vault.workspace.get(result.imported[0].asset_id)
    assert asset.generation_settings == {"source_file": "d\ufffdy/caf\ufffd-\u00e9.png"}
    raw = stored_settings(vault, asset.id)
    assert json.loads(raw.decode("utf-8")) == asset.generation_settings and b"\\u0000" not in raw
    vault.workspace.delete(asset.id)
    added = vault.workspace.add(folder / os.fsdecode(b"caf\xe9-\xc3\xa9.png"))
    assert added.generation_settings == {"source_file": "caf\ufffd-\u00e9.png"}
    stored_settings(vault, added.id).decode("utf-8")


def test_a_name_that_is_not_utf8_reaches_the_server(tmp_path: Path, remote: Any) -> None:
    """PostgreSQL's jsonb takes the settings naming it (a lone surrogate, or \\u0000, would stop every sync)."""
    out = tmp_path / "out"
    (out / "day").mkdir(parents=True)
    make_png(out / "day" / os.fsdecode(b"\xff\xfe-fox.png"), color=8)
    with Vault.create(tmp_path / "v", user_id=USER_A) as vault:
        imported = vault.workspace.import_folder(out, recursive=True).imported[0]
        saved = vault.library.save(imported.asset_id)
        assert vault.sync(remote).rows_written == 1
    with psycopg.connect(remote.database_url) as conn:
        row = conn.execute("SELECT generation_settings FROM public.user_library WHERE id = %s", (saved.id,)).fetchone()
    assert row[0] == {"source_file": "day/\ufffd\ufffd-fox.png"} == saved.generation_settings


# ---------------------------------------------------------------- watch


def test_a_watch_keeps_each_files_path_relative_to_the_folder(vault: Vault, out: Path, tmp_path: Path) -> None:
    """The catch-up's files and the new ones alike, in sub-folders too."""
    (out / "2026-11-28").mkdir()
    make_png(out / "2026-11-28" / "00000-1.png", color=1)
    make_png(out / "top.png", color=2)
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, recursive=True):
        assert wait_for(lambda: len(seen.names("imported")) == 2)
        (out / "2026-11-29").mkdir()
        time.sleep(0.3)  # (its watch set up)
        write_by_rename(out / "2026-11-29", "ComfyUI_00012_.png", make_png(tmp_path / "t.png", color=3).read_bytes())
        write_by_rename(out, "new.png", make_png(tmp_path / "u.png", color=4).read_bytes())
        assert wait_for(lambda: len(seen.names("imported")) == 4)
    assert set(names(vault)) == {"2026-11-28/00000-1.png", "top.png", "2026-11-29/ComfyUI_00012_.png", "new.png"}


def test_a_late_sidecar_fills_the_file_taken_without_metadata_and_keeps_its_name(vault: Vault, out: Path,
                                                                                 tmp_path: Path) -> None:
    """A file without metadata has its name as its settings now, not {}: its late sidecar still fills the row
    (which held a file without metadata's values), and the row keeps the name."""
    (out / "day").mkdir()
    seen = Recorder()
    with Watcher(vault, out, on_event=seen, recursive=True):
        time.sleep(0.3)
        write_by_rename(out / "day", "00000-7.png", make_png(tmp_path / "t.png", color=7).read_bytes())
        assert wait_for(lambda: seen.names("imported") == ["00000-7.png"])
        (asset,) = vault.workspace.list().items
        assert asset.generation_settings == {"source_file": "day/00000-7.png"}
        (out / "day" / "00000-7.txt").write_text(A1111_TEXT.replace("4242", "77"))
        assert wait_for(lambda: seen.names("sidecar_read") == ["00000-7.png"])
    (asset,) = vault.workspace.list().items
    assert (asset.generation_seed, asset.original_prompt, asset.model_used) == (77, "a red fox in snow", "sdxl")
    assert asset.generation_settings["sidecar"] == "00000-7.txt"
    assert asset.generation_settings["source_file"] == "day/00000-7.png"


# ----------------------------------------------------------- add and save


def test_add_keeps_the_files_name_and_given_settings_as_they_are(vault: Vault, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    fox = make_png(tmp_path / "in" / "fox.png", color=1, text_chunks=a1111("a red fox", 1))
    added = vault.workspace.add(fox)
    assert added.generation_settings["source_file"] == "fox.png" and added.generation_settings["steps"] == 20
    kept = vault.library.add(make_png(tmp_path / "in" / "heron.png", color=2), seed=3)
    assert kept.generation_settings == {"source_file": "heron.png"}
    (tmp_path / "in" / "alias.png").symlink_to(tmp_path / "in" / "target.png")
    make_png(tmp_path / "in" / "target.png", color=3)
    assert vault.library.add(tmp_path / "in" / "alias.png").generation_settings == {"source_file": "alias.png"}
    given = vault.workspace.add(make_png(tmp_path / "in" / "given.png", color=4), settings={"steps": 20})
    assert given.generation_settings == {"steps": 20}
    assert vault.library.add(make_png(tmp_path / "in" / "empty.png", color=5), settings={}).generation_settings == {}


def test_cli_add_keeps_the_name_and_show_prints_it(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--vault", str(tmp_path / "v")]

    def cli(*args: str) -> str:
        result = runner.invoke(main, [*base, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    cli("init", "--user", USER)
    (tmp_path / "out" / "2026-11-29").mkdir(parents=True)
    image = make_png(tmp_path / "out" / "2026-11-29" / "ComfyUI_00012_.png", color=1)
    added = json.loads(cli("add", str(image), "--json"))
    assert added["generation_settings"] == {"source_file": "ComfyUI_00012_.png"}
    given = json.loads(cli("add", str(make_png(tmp_path / "b.png", color=2)), "--settings", '{"steps": 20}',
                           "--json"))
    assert given["generation_settings"] == {"steps": 20}
    cli("rm", added["id"], "--yes")
    imported = json.loads(cli("import", "-r", str(tmp_path / "out"), "--json"))
    shown = cli("show", imported["imported"][0]["asset_id"])
    assert "  source_file: 2026-11-29/ComfyUI_00012_.png\n" in shown


def test_save_keeps_the_name(vault: Vault, tmp_path: Path) -> None:
    (tmp_path / "out" / "day").mkdir(parents=True)
    make_png(tmp_path / "out" / "day" / "00001.png", color=1, text_chunks=a1111("a red fox", 1))
    result = vault.workspace.import_folder(tmp_path / "out", recursive=True)
    saved = vault.library.save(result.imported[0].asset_id, title="fox")
    assert saved.generation_settings["source_file"] == "day/00001.png"
    assert saved.generation_settings == vault.workspace.get(result.imported[0].asset_id).generation_settings
