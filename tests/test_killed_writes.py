"""A process killed between a file's rename (or link) into place and its row's commit leaves nothing behind.

Each write notes where its files go before its transaction (localvault._write_intents); the next opening of
the vault for writing removes what a note covers that no row uses. The kill is real (SIGKILL, in a child
process); its moment is forced by wrapping the rename or link so that the process kills itself right after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import USER_A, write_media

from localvault import Vault, _stale_temps
from localvault.files import TEMP_PREFIX

CHILD = """
import os, signal, sys
from pathlib import Path
from localvault import Vault
from localvault.files import FileStore

root, source, call = sys.argv[1], sys.argv[2], sys.argv[3]
before_rename = sys.argv[4:] == ["before"]
vault = Vault.open(root)
saved_from = vault.workspace.add(Path(source).with_name("kept.png")).id if call == "library.save" else None

def killed_after(real):
    def wrapper(self, *args, **kwargs):
        if not before_rename:
            real(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # the crash: the file in place (or still staged), its row not committed
    return wrapper

FileStore.commit = killed_after(FileStore.commit)
FileStore.link = killed_after(FileStore.link)
if call == "workspace.add":
    vault.workspace.add(source)
elif call == "library.add":
    vault.library.add(source, title="direct")
elif call == "library.save":
    vault.library.save(saved_from, title="kept")
else:
    vault.workspace.import_folder(Path(source).parent / "rig", workers=1)
"""


def final_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for bucket in ("workspace-temp", "user-library")
                  for p in (root / bucket).rglob("*") if p.is_file() and not p.name.startswith(TEMP_PREFIX))


def _killed_write(tmp_path: Path, call: str, when: str) -> tuple[Path, Path]:
    """A new vault, and a child process that makes ``call`` and is SIGKILLed ``when`` ("before" or "after") its
    file's rename; the vault's folder and the source file."""
    root = tmp_path / "vault"
    Vault.create(root, user_id=USER_A).close()
    source = write_media(tmp_path / "src", seed=1)
    write_media(tmp_path / "src", seed=2).rename(tmp_path / "src" / "kept.png")
    for seed in range(3, 6):
        write_media(tmp_path / "src" / "rig", seed=seed)
    child = subprocess.run([sys.executable, "-c", CHILD, str(root), str(source), call, when], capture_output=True)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    return root, source


@pytest.mark.parametrize("call", ["workspace.add", "library.add", "library.save", "import"])
def test_a_write_killed_before_its_commit_leaves_no_file(tmp_path: Path, call: str) -> None:
    root, source = _killed_write(tmp_path, call, "after")
    before = final_files(root)
    kept = 1 if call == "library.save" else 0  # the workspace asset the save copies from
    assert len(before) == kept + 1, before  # the file put in place by the killed write
    with Vault.open(root, readonly=True) as reader:  # a read-only check cannot remove it, but knows it
        report = reader.verify()
        assert report.orphans == [] and len(report.unsettled) == 1 and report.clean
    with Vault.open(root) as vault:  # the next opening for writing settles it
        assert vault.workspace.count() == kept and vault.library.count() == 0
        assert len(final_files(root)) == kept
        report = vault.verify()
        assert report.clean and report.orphans == [] and report.unsettled == []
        # Nothing was lost: the write can be done again.
        if call == "workspace.add":
            vault.workspace.add(source)
        elif call == "library.add":
            vault.library.add(source)
        elif call == "library.save":
            vault.library.save(vault.workspace.list().items[0].id)
        else:
            assert len(vault.workspace.import_folder(tmp_path / "src" / "rig").imported) == 3
        assert vault.verify().clean


@pytest.mark.parametrize("call", ["workspace.add", "library.add", "library.save", "import"])
def test_a_temporary_file_a_write_killed_before_its_rename_left_is_swept_once_stale(
        tmp_path: Path, call: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write killed while its file was staged (before the rename) left the copy, up to 1 GiB, under its
    temporary name until a 'verify --repair' that few users run. Opening the vault for writing now removes such
    files once an hour old (a write under way keeps its file's mtime fresh), walking the buckets once a day."""
    root, _source = _killed_write(tmp_path, call, "before")
    left = [p for bucket in ("workspace-temp", "user-library") for p in (root / bucket).rglob(f"{TEMP_PREFIX}*")]
    assert left and len(final_files(root)) == (1 if call == "library.save" else 0)  # staged, never in place
    # An hour, made a second: a save's staged file is a hard link, whose fresh ctime no utime can set back.
    monkeypatch.setattr(_stale_temps, "STALE_TEMP_SECONDS", 1.0)
    time.sleep(1.1)
    under_way = root / "user-library" / USER_A / f"{TEMP_PREFIX}another-process-writing"
    under_way.parent.mkdir(parents=True, exist_ok=True)
    under_way.write_bytes(b"being copied")
    with Vault.open(root) as vault:  # the killed process's own opening swept less than a day ago
        assert all(temp.exists() for temp in left)
        vault.db.conn.execute("UPDATE vault_meta SET value = '2020-01-01T00:00:00.000Z' WHERE key = 'last_temp_sweep'")
    with Vault.open(root) as vault:
        assert [temp for temp in left if temp.exists()] == [] and under_way.exists()
        assert vault.db.get_meta("last_temp_sweep") > "2020-01-01T00:00:00.000Z"
        under_way.unlink()
        assert vault.verify().clean


def test_a_note_is_kept_until_it_is_old_whatever_a_settle_finds(tmp_path: Path) -> None:
    """A note taken by a write still waiting for the lock covers nothing yet: a settle that meets it must keep
    it, or the write, killed after its rename, would leave its file uncovered. And in a noted folder, only the
    noted write's file (by its sha256) goes: another file without a row there may be the only copy of an asset
    whose row was lost (an older vault.db restored), as verify --repair knows."""
    import hashlib

    from localvault import _write_intents
    from localvault.files import WORKSPACE_BUCKET

    left = b"left by a killed write"
    with Vault.create(tmp_path / "vault", user_id=USER_A) as vault:
        fresh = _write_intents.note(vault.db, WORKSPACE_BUCKET, [f"{USER_A}/job/"],
                                    [hashlib.sha256(left).hexdigest()])
        old = _write_intents.note(vault.db, WORKSPACE_BUCKET, [f"{USER_A}/other/"])
        vault.db.conn.execute("UPDATE write_intents SET noted_at = '2020-01-01T00:00:00.000Z' WHERE id = ?", (old,))
        assert _write_intents.settle_now(vault.db, vault.files) == []
        assert [r[0] for r in vault.db.conn.execute("SELECT id FROM write_intents")] == [fresh]
        folder = vault.root / WORKSPACE_BUCKET / USER_A / "job"
        folder.mkdir(parents=True)
        (folder / "0.png").write_bytes(left)
        (folder / "1.png").write_bytes(b"an asset whose row was lost")
        (folder / f"{TEMP_PREFIX}staged").write_bytes(b"a write under way")
        assert _write_intents.settle_now(vault.db, vault.files) == [f"{WORKSPACE_BUCKET}/{USER_A}/job/0.png"]
        assert sorted(os.listdir(folder)) == sorted(["1.png", f"{TEMP_PREFIX}staged"])
        assert vault.verify().orphans == [f"{WORKSPACE_BUCKET}/{USER_A}/job/1.png"]  # for --repair to set aside


def test_a_file_left_that_cannot_be_removed_does_not_stop_the_vault_opening(tmp_path: Path) -> None:
    """Like a queued deletion that cannot be done: warned about, its note kept, tried again at the next opening."""
    from conftest import without_dac_override

    root = tmp_path / "vault"
    Vault.create(root, user_id=USER_A).close()
    source = write_media(tmp_path / "src", seed=1)
    killed = subprocess.run([sys.executable, "-c", CHILD, str(root), str(source), "workspace.add"], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    (left,) = [p for p in (root / "workspace-temp").rglob("*.png")]
    left.parent.chmod(0o555)  # the file cannot be unlinked from its folder
    try:
        with without_dac_override(), Vault.open(root) as vault:
            assert vault.workspace.count() == 0
        assert left.exists()
    finally:
        left.parent.chmod(0o755)
    with Vault.open(root) as vault:
        assert not left.exists() and vault.verify().clean


def test_a_vault_of_the_previous_schema_read_without_migration_is_verified(tmp_path: Path) -> None:
    """A read-only opening does not migrate: a vault written before the notes has no table for them."""
    import sqlite3

    with Vault.create(tmp_path / "vault", user_id=USER_A) as vault:
        vault.workspace.add(write_media(tmp_path / "src", seed=1))
    conn = sqlite3.connect(tmp_path / "vault" / "vault.db")
    conn.execute("DROP TABLE write_intents")
    conn.execute("PRAGMA user_version = 4")
    conn.close()
    with Vault.open(tmp_path / "vault", readonly=True) as reader:
        report = reader.verify()
        assert report.clean and report.checked == 1 and report.unsettled == []


def test_a_name_that_is_not_utf8_in_a_noted_folder_does_not_stop_the_opening(tmp_path: Path) -> None:
    """Such a name (its bytes held as lone surrogates) cannot be looked up in SQLite: it has no row, and the
    settle goes on."""
    from localvault.files import WORKSPACE_BUCKET

    with Vault.create(tmp_path / "vault", user_id=USER_A) as vault:
        vault.workspace.add(write_media(tmp_path / "src", seed=1), job_id="00000000-0000-4000-8000-000000000001")
    folder = tmp_path / "vault" / WORKSPACE_BUCKET / USER_A / "00000000-0000-4000-8000-000000000001"
    with open(bytes(folder) + b"/odd-\xff.png", "wb") as odd:
        odd.write(b"not the vault's")
    from localvault import _write_intents

    with Vault.open(tmp_path / "vault") as vault:
        _write_intents.note(vault.db, WORKSPACE_BUCKET, [f"{USER_A}/00000000-0000-4000-8000-000000000001/"])
        assert _write_intents.settle_now(vault.db, vault.files) == []
    assert b"odd-\xff.png" in os.listdir(bytes(folder))


def test_a_noted_folder_that_cannot_be_listed_does_not_stop_the_vault_opening(tmp_path: Path) -> None:
    """Before: the PermissionError of listing it escaped from Vault.open as it was. Now it is warned about and
    every note is kept, to look again at the next opening (as for a file that cannot be removed)."""
    import hashlib

    from conftest import without_dac_override

    from localvault import _write_intents
    from localvault.files import WORKSPACE_BUCKET

    root = tmp_path / "vault"
    left = b"left by a killed write"
    with Vault.create(root, user_id=USER_A) as vault:
        _write_intents.note(vault.db, WORKSPACE_BUCKET, [f"{USER_A}/job/"])
        _write_intents.note(vault.db, WORKSPACE_BUCKET, [f"{USER_A}/other/"], [hashlib.sha256(left).hexdigest()])
    other = root / WORKSPACE_BUCKET / USER_A / "other"
    other.mkdir(parents=True)
    (other / "0.png").write_bytes(left)
    folder = root / WORKSPACE_BUCKET / USER_A / "job"
    folder.mkdir(parents=True)
    folder.chmod(0o000)
    try:
        with without_dac_override(), Vault.open(root) as vault:
            assert vault.db.conn.execute("SELECT count(*) FROM write_intents").fetchone()[0] == 2
            assert vault.workspace.count() == 0
        assert not (other / "0.png").exists()  # the other noted folder's leftover went all the same
    finally:
        folder.chmod(0o755)
    with Vault.open(root) as vault:
        assert vault.verify().clean
