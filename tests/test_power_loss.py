"""Power-loss durability: every folder a call makes must have its entry in its parent made durable (an fsync
of the parent) before the call returns, else a power cut can drop the folder and every file renamed into it,
however well those files and the folder itself were fsynced. And the vault's SQLite runs synchronous=FULL.

Each test records the folders os.fsync was given (by /proc/self/fd) and the folders that did not exist before
the call; a new folder whose parent was never fsynced fails the test.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import write_media

from localvault import Vault


@contextmanager
def recorded_fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    real = os.fsync
    synced: list[str] = []

    def recording(fd: int) -> None:
        real(fd)
        try:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass

    monkeypatch.setattr(os, "fsync", recording)
    yield synced
    monkeypatch.undo()


def folders(top: Path) -> set[str]:
    found = {str(top)} if top.is_dir() else set()
    for base, dirs, _names in os.walk(top):
        found.update(os.path.join(base, d) for d in dirs)
    return found


def new_folders_not_durable(top: Path, monkeypatch: pytest.MonkeyPatch, call: Callable[[], object]) -> list[str]:
    before = folders(top)
    with recorded_fsyncs(monkeypatch) as synced:
        call()
    made = sorted(folders(top) - before)
    assert made, "the call made no folder: the test does not test anything"
    return [f for f in made if os.path.dirname(f) not in synced]


def test_a_new_vault_folder_is_durable_in_its_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data" / "localvault" / "vault"  # as the default vault path: new parents too

    def create() -> None:
        Vault.create(root).close()

    assert new_folders_not_durable(tmp_path, monkeypatch, create) == []


def test_repair_makes_the_recovered_folders_durable(vault: Vault, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """verify --repair renames an orphan (perhaps an asset's only copy) out of its bucket, whose folder it fsyncs:
    the file must be durable where it went, recovered/<bucket>/<user>/… included."""
    kept = vault.library.add(write_media(tmp_path, "png", 1))
    stray = Path(vault.library.file_path(kept)).with_name("stray.png")
    stray.write_bytes(write_media(tmp_path / "s", "png", 2).read_bytes())
    assert new_folders_not_durable(vault.root, monkeypatch, lambda: vault.verify(repair=True)) == []
    assert (vault.root / "recovered" / "user-library" / vault.user_id / "stray.png").exists()


def test_an_upload_to_a_folder_bucket_makes_its_folders_durable(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The first upload makes the bucket's folder and the user's: once the server row is committed and the vault
    has acknowledged it, a power cut must not take the object away with a folder entry never fsynced."""
    from localvault.sync.bucket import Bucket

    (tmp_path / "nas").mkdir()
    local = write_media(tmp_path / "src", "png", 3)
    data = local.read_bytes()
    bucket = Bucket(f"file://{tmp_path}/nas/user-library")

    def upload() -> None:
        bucket.check_reachable()
        bucket.upload(local, "0f0f0f0f-0000-4000-8000-000000000000/a.png", hashlib.sha256(data).hexdigest(),
                      len(data), "image/png")

    assert new_folders_not_durable(tmp_path / "nas", monkeypatch, upload) == []


def test_objects_removed_from_a_folder_bucket_stay_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The objects of deleted rows are removed after the server's commit, and the deletion is then acknowledged:
    their folder must be fsynced first, else a power cut brings back a deleted (perhaps private) image."""
    from localvault.sync.bucket import Bucket

    (tmp_path / "nas").mkdir()
    local = write_media(tmp_path / "src", "png", 5)
    data = local.read_bytes()
    bucket = Bucket(f"file://{tmp_path}/nas/user-library")
    bucket.check_reachable()
    keys = [f"0f0f0f0f-0000-4000-8000-000000000000/{name}.png" for name in ("a", "b")]
    for key in keys:
        bucket.upload(local, key, hashlib.sha256(data).hexdigest(), len(data), "image/png")
    with recorded_fsyncs(monkeypatch) as synced:
        assert bucket.delete([*keys, "0f0f0f0f-0000-4000-8000-000000000000/never-there.png"]) == {}
    folder = tmp_path / "nas" / "user-library" / "0f0f0f0f-0000-4000-8000-000000000000"
    assert not any(folder.glob("*.png")) and synced.count(str(folder)) == 1


def test_an_export_into_a_new_folder_is_durable(vault: Vault, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    asset = vault.workspace.add(write_media(tmp_path, "png", 4))
    out = tmp_path / "out"

    def export() -> None:
        vault.export(asset.id, f"{out}/sub/")

    assert new_folders_not_durable(tmp_path, monkeypatch, export) == []


def test_every_connection_commits_with_synchronous_full(vault: Vault) -> None:
    """WAL with synchronous=NORMAL may lose the last commits on a power cut: a delete's row removal whose file
    is already gone, an import --move whose source is already deleted, a sync's acknowledgement."""
    found = [vault.db.conn.execute("PRAGMA synchronous").fetchone()[0]]
    thread = threading.Thread(target=lambda: found.append(vault.db.conn.execute("PRAGMA synchronous").fetchone()[0]))
    thread.start()
    thread.join()
    assert vault.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert found == [2, 2]  # FULL


def test_a_queued_deletion_is_forgotten_only_once_the_removal_is_durable(vault: Vault, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A deleted asset's file is removed by the drain, and its queue entry dropped in the drain's commit. With the
    removal not yet on disk at that commit, a power cut brought the file back (a deleted, perhaps private, image)
    with no row and no entry to say it must go. The folder it left (its parent, for a workspace job folder then
    emptied and removed) is fsynced while the entry is still there."""
    import sqlite3

    kept = vault.library.add(write_media(tmp_path, "png", 1))
    staged = vault.workspace.add(write_media(tmp_path, "png", 2))
    library_folder = os.path.dirname(vault.library.file_path(kept))
    job_folder = os.path.dirname(vault.workspace.file_path(staged))
    reader = sqlite3.connect(vault.root / "vault.db")
    entries_when_synced: dict[str, int] = {}
    real = os.fsync

    def recording(fd: int) -> None:
        real(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        entries_when_synced[path] = reader.execute("SELECT count(*) FROM pending_deletes").fetchone()[0]

    monkeypatch.setattr(os, "fsync", recording)
    vault.library.delete(kept.id)
    vault.workspace.delete(staged.id)
    monkeypatch.undo()

    assert not os.path.exists(job_folder)  # emptied, and removed
    assert entries_when_synced.get(library_folder) == 1
    assert entries_when_synced.get(os.path.dirname(job_folder)) == 1
    assert reader.execute("SELECT count(*) FROM pending_deletes").fetchone()[0] == 0
    reader.close()


def test_a_file_a_killed_write_left_is_removed_durably_before_its_note_is_forgotten(
        vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    """The opening's settle removes the file a killed write left and forgets the write's old note in one commit:
    the removal is made durable first, or a power cut would bring back a file no note covers."""
    from localvault import _write_intents
    from localvault.files import LIBRARY_BUCKET

    left = f"{vault.user_id}/00000000-0000-4000-8000-000000000001.png"
    _write_intents.note(vault.db, LIBRARY_BUCKET, [left])
    vault.db.conn.execute("UPDATE write_intents SET noted_at = '2020-01-01T00:00:00.000Z'")
    placed = Path(vault.files.full_path(LIBRARY_BUCKET, left))
    placed.parent.mkdir(parents=True, exist_ok=True)
    placed.write_bytes(b"renamed into place, never committed")
    with recorded_fsyncs(monkeypatch) as synced:
        assert _write_intents.settle_now(vault.db, vault.files) == [f"{LIBRARY_BUCKET}/{left}"]
    assert os.path.dirname(vault.files.full_path(LIBRARY_BUCKET, left)) in synced
    assert vault.db.conn.execute("SELECT count(*) FROM write_intents").fetchone()[0] == 0


def test_a_removal_that_cannot_be_made_durable_stays_queued(vault: Vault, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder's fsync failing (EIO: a fault only a failing disk gives, so it is injected) keeps the entries
    queued: the next drain finds the files gone, makes that durable, and settles them."""
    from localvault import _disk, pending

    kept = vault.library.add(write_media(tmp_path, "png", 1))

    def failing(path: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_disk, "fsync_folder", failing)
    vault.library.delete(kept.id)
    assert not os.path.exists(vault.files.full_path("user-library", kept.storage_path))
    assert vault.db.conn.execute("SELECT count(*) FROM pending_deletes").fetchone()[0] == 1
    monkeypatch.undo()
    assert pending.drain(vault.db, vault.files) == 1
    assert vault.db.conn.execute("SELECT count(*) FROM pending_deletes").fetchone()[0] == 0


def test_a_queued_deletion_settles_when_its_folders_are_gone(vault: Vault, tmp_path: Path) -> None:
    """The user's workspace folder removed by hand (its job folder with it) before the drain: the removal is
    done, and nothing is left to fsync there but the bucket. The entry stayed queued for good, and warned of at
    every opening (a review)."""
    import shutil

    from localvault import pending

    staged = vault.workspace.add(write_media(tmp_path, "png", 3))
    with vault.db.write() as conn:
        conn.execute("DELETE FROM workspace_assets WHERE id = ?", (staged.id,))
        pending.queue_delete(conn, "workspace-temp", staged.temp_storage_path)
    shutil.rmtree(vault.root / "workspace-temp" / vault.user_id)
    assert pending.drain(vault.db, vault.files) == 1
    assert vault.db.conn.execute("SELECT count(*) FROM pending_deletes").fetchone()[0] == 0
