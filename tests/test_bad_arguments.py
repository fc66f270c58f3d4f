"""Arguments of the wrong kind given to the public API: each is an InvalidInputError (or the error the call
documents), raised before anything is done, never a raw TypeError, AttributeError or OSError from deep inside
(found by a hunt for errors that escape the public calls)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import tomllib
from conftest import USER_A, write_media

from localvault import Vault
from localvault import metadata as vault_metadata
from localvault.errors import InvalidInputError, NotFoundError, OfflineError, StorageError, SyncError
from localvault.sync import Remote, status
from localvault.sync.bucket import Bucket

DATABASE_URL = "postgresql://someone@127.0.0.1:1/nowhere"


@pytest.mark.parametrize("call", ["import_folder", "verify", "cleanup", "workspace.cleanup", "sync", "add"])
def test_a_callback_that_cannot_be_called_is_refused_before_any_work(vault: Vault, tmp_path: Path,
                                                                      call: str) -> None:
    """It was a TypeError at the first event, after part of the work (the import of a first file) was done."""
    source = write_media(tmp_path / "src", "png", 1)
    calls = {
        "import_folder": lambda: vault.workspace.import_folder(source.parent, progress="x"),
        "verify": lambda: vault.verify(progress=5),
        "cleanup": lambda: vault.cleanup(progress="x"),
        "workspace.cleanup": lambda: vault.workspace.cleanup(progress=[]),
        "sync": lambda: vault.sync(Remote(DATABASE_URL, (tmp_path / "b").as_uri()), progress="x"),
        "add": lambda: vault.workspace.add(source, on_bytes=5),
    }
    with pytest.raises(InvalidInputError, match="must be a function"):
        calls[call]()
    assert vault.workspace.count() == 0


def test_a_watcher_callback_that_cannot_be_called_is_refused(vault: Vault, tmp_path: Path) -> None:
    from localvault.watch import Watcher

    (tmp_path / "rig").mkdir()
    with pytest.raises(InvalidInputError, match="on_event must be a function"):
        Watcher(vault, tmp_path / "rig", on_event="print")


def test_a_remote_given_as_its_url_is_refused_by_sync_and_status(vault: Vault) -> None:
    for call in (lambda: vault.sync(DATABASE_URL), lambda: status(vault, DATABASE_URL)):  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="must be a localvault.sync.Remote"):
            call()
    with pytest.raises(InvalidInputError, match="check_online must be True or False"):
        status(vault, check_online="no")  # type: ignore[arg-type]


def test_remote_check_refuses_a_user_id_that_is_not_a_uuid_before_connecting() -> None:
    """It raised psycopg's InvalidTextRepresentation from the server; now it is refused before any connection
    (this server does not exist: a connection would be OfflineError)."""
    with pytest.raises(InvalidInputError, match="not a valid UUID"):
        Remote(DATABASE_URL, "memory://b").check("not-a-uuid")


@pytest.mark.parametrize("value", [5, "endpoint", ["a"], True])
def test_client_settings_that_are_not_a_dict_are_refused_and_a_stored_one_is_reported(
        vault: Vault, tmp_path: Path, value: Any) -> None:
    """They were accepted, then every status and sync failed with AttributeError until the remote was set
    again; one stored by an older localvault is now a `not_ready` status with the reason."""
    for name in ("client_kwargs", "config_kwargs"):
        with pytest.raises(InvalidInputError, match=f"{name} must be a table of settings"):
            vault.set_remote(DATABASE_URL, "s3://bucket", {name: value})
    assert vault.config.remote is None
    vault.set_remote(DATABASE_URL, "s3://bucket", {"client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}})
    settings = tomllib.loads((vault.root / "localvault.toml").read_text())
    settings["remote"]["storage_options"]["client_kwargs"] = "http://127.0.0.1:1"  # as an older localvault kept it
    (vault.root / "localvault.toml").write_text(tomli_w.dumps(settings))
    with Vault.open(vault.root) as reopened:
        found = status(reopened, check_online=False)
    assert found.problem == "not_ready" and "client_kwargs must be a table of settings" in (found.offline_reason or "")


def test_a_bucket_that_connects_as_it_is_made_is_offline_or_refused_never_a_raw_os_error(tmp_path: Path) -> None:
    """ftp:// connects when its filesystem is made (a refused connection escaped as ConnectionRefusedError);
    zip:// opens its archive (IsADirectoryError)."""
    with pytest.raises(OfflineError, match="cannot reach the bucket ftp://127.0.0.1:1/x"):
        Bucket("ftp://127.0.0.1:1/x")
    with pytest.raises(SyncError, match="cannot use bucket URL"):
        Bucket("zip://x", {"fo": str(tmp_path)})


@pytest.mark.parametrize("text", ["+0f25ced-35a7-4b8e-9c1d-2a3b4c5d6e7f", "0f25ced3-35a7-4b8e-9c1d-2a3b4c5d6_7f"])
def test_an_id_with_a_sign_or_an_underscore_is_not_read_as_another_id(vault: Vault, tmp_path: Path,
                                                                                 text: str) -> None:
    """uuid.UUID reads the digits with int(): "+0f25ced…" was the id "00f25ced…", another asset's, and an
    underscore between two digits was dropped."""
    with pytest.raises(InvalidInputError, match="not a valid UUID"):
        vault.library.get(text)
    with pytest.raises(NotFoundError):  # (the spellings uuid.UUID takes are still read)
        vault.library.get("{0F25CED3-35A7-4B8E-9C1D-2A3B4C5D6E7F}")


def test_an_id_with_a_sign_or_an_underscore_does_not_name_another_asset_in_the_cli(vault: Vault, tmp_path: Path) -> None:
    """`localvault rm +d7ddb97-…` deleted the asset 0d7ddb97-… (resolve_id read ids with uuid.UUID itself)."""
    from click.testing import CliRunner

    from localvault.cli import main

    for seed in range(400):  # until an id starts with 0 (1 in 16)
        asset = vault.workspace.add(write_media(tmp_path / "src", "png", seed))
        if asset.id.startswith("0"):
            break
    signed, underscored = "+" + asset.id[1:], asset.id[1:3] + "_" + asset.id[3:]
    for text in (signed, underscored):
        with pytest.raises(InvalidInputError, match="not a valid UUID"):
            vault.resolve_id(text)
        removed = CliRunner().invoke(main, ["--vault", str(vault.root), "rm", text])
        assert removed.exit_code == 3, removed.output
    assert vault.workspace.get(asset.id).id == asset.id
    assert vault.resolve_id(asset.id.upper()) == vault.resolve_id(asset.id[:8]) == asset.id


def test_metadata_read_refuses_arguments_of_the_wrong_kind(tmp_path: Path) -> None:
    image = write_media(tmp_path, "png", 1)
    read_end, write_end = os.pipe()
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe, pytest.raises(StorageError, match="can seek"):
        vault_metadata.read(image, handle=pipe)
    with open(image, "rb") as closed:
        pass
    with pytest.raises(StorageError, match="from its handle"):
        vault_metadata.read(image, handle=closed)
    for path in (str(tmp_path / "a\0.png"), None, 5):
        with pytest.raises(InvalidInputError, match="the file to read must be a path"):
            vault_metadata.read(path)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="data must be the file's bytes"):
        vault_metadata.read(image, data="text")  # type: ignore[arg-type]
    assert vault_metadata.read(image, data=image.read_bytes()).source == vault_metadata.read(image).source


def test_create_with_a_filesystem_that_is_not_one_leaves_no_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="fs must be an fsspec filesystem"):
        Vault.create(tmp_path / "v", user_id=USER_A, fs="memory")  # type: ignore[arg-type]
    assert not (tmp_path / "v").exists()


def test_create_cut_short_by_a_full_disk_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings file could not be written: the folder stayed, with its two empty buckets."""
    from localvault.config import VaultConfig

    def full_disk(self: VaultConfig, root: Path) -> None:
        raise StorageError(f"the disk holding {root} is full; free some space and try again")

    monkeypatch.setattr(VaultConfig, "save", full_disk)
    with pytest.raises(StorageError, match="is full"):
        Vault.create(tmp_path / "v", user_id=USER_A)
    assert not (tmp_path / "v").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made stays, emptied of what the create made in it
    with pytest.raises(StorageError, match="is full"):
        Vault.create(tmp_path / "kept", user_id=USER_A)
    assert (tmp_path / "kept").is_dir() and list((tmp_path / "kept").iterdir()) == []


def test_a_dry_run_sync_of_a_closed_vault_says_it_is_closed(vault: Vault, tmp_path: Path) -> None:
    """It said the server was offline (met first), not that the vault was closed."""
    vault.close()
    with pytest.raises(StorageError, match="closed"):
        vault.sync(Remote(DATABASE_URL, (tmp_path / "b").as_uri()), dry_run=True)


@pytest.mark.parametrize("folder", ["made by the user", "made by the create"])
def test_a_create_that_fails_beside_another_never_removes_the_others_folders(tmp_path: Path, folder: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Two creates of one folder: A fails (a full disk as its database is made) while B waits for the folder's
    lock. A's clean-up ran after it let go of the lock, and removed B's new, empty buckets (a review: 2 runs
    in 40 with real processes); it runs under the lock now."""
    import threading

    import localvault.vault as vault_module

    root = tmp_path / "v"
    if folder == "made by the user":
        root.mkdir()
    b_started, b_done = threading.Event(), threading.Event()
    real_open, real_remove = vault_module.Database.open, vault_module._remove_if_empty

    def open_database(path: Path, **options: Any) -> Any:
        if threading.current_thread().name == "A":
            b_started.wait(5)
            time.sleep(0.2)  # B now waits for the lock
            raise StorageError(f"the disk holding {path} is full; free some space and try again")
        return real_open(path, **options)

    def remove_if_empty(folder: Path) -> None:
        if threading.current_thread().name == "A":
            b_done.wait(1)  # (once, after the lock was let go, B made its vault here)
        real_remove(folder)

    if folder == "made by the user":
        monkeypatch.setattr(vault_module.Database, "open", staticmethod(open_database))
    else:  # (failing before its settings are written: the folder is empty again, and goes)
        real_save = vault_module.VaultConfig.save

        def save_settings(self: Any, where: Path) -> None:
            if threading.current_thread().name == "A":
                open_database(where / "vault.db")
            real_save(self, where)

        monkeypatch.setattr(vault_module.VaultConfig, "save", save_settings)
    monkeypatch.setattr(vault_module, "_remove_if_empty", remove_if_empty)
    made: dict[str, Any] = {}

    def create(name: str) -> None:
        if name == "B":
            b_started.set()
        try:
            made[name] = Vault.create(root, user_id=USER_A)
        except StorageError as exc:
            made[name] = exc
        finally:
            if name == "B":
                b_done.set()

    a = threading.Thread(target=create, args=("A",), name="A")
    a.start()
    time.sleep(0.1)
    b = threading.Thread(target=create, args=("B",), name="B")
    b.start()
    a.join()
    b.join()
    assert isinstance(made["A"], StorageError), made
    if folder == "made by the create":  # A removed it, under the lock B then took: B says so
        assert isinstance(made["B"], StorageError) and "try again" in str(made["B"]), made
        assert not root.exists()
        made["B"] = Vault.create(root, user_id=USER_A)
    with made["B"] as vault:
        assert vault.verify(repair=True).clean
        vault.workspace.add(write_media(tmp_path / "src", "png", 1))


def test_a_callbacks_own_sqlite_error_is_not_blamed_on_the_vault(vault: Vault, tmp_path: Path) -> None:
    """A progress callback writing to the app's own (locked) database made verify and import_folder say that
    vault.db stayed locked for 60 s (a review): the callback's error is the app's, and reaches it as it is."""
    import sqlite3

    app_db = sqlite3.connect(tmp_path / "app.db", timeout=0, isolation_level=None)
    app_db.execute("CREATE TABLE events (stage TEXT)")
    holder = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process of the app holds its database

    def record(event: Any) -> None:
        app_db.execute("INSERT INTO events VALUES (?)", (event.stage,))

    source = write_media(tmp_path / "src", "png", 1)
    for call in (lambda: vault.verify(progress=record), lambda: vault.workspace.import_folder(source.parent,
                                                                                                  progress=record)):
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            call()
    holder.rollback()


@pytest.mark.parametrize("readonly", [True, False])
def test_opening_a_vault_another_program_holds_exclusively_is_a_storage_error(tmp_path: Path, readonly: bool,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """It raised sqlite3.OperationalError "database is locked" (a review)."""
    import sqlite3

    from localvault import db

    with Vault.create(tmp_path / "v", user_id=USER_A):
        pass
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    holder = sqlite3.connect(tmp_path / "v" / "vault.db", isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageError, match="stayed locked by another connection"):
            Vault.open(tmp_path / "v", readonly=readonly)
    finally:
        holder.close()
    with Vault.open(tmp_path / "v", readonly=readonly) as vault:
        assert vault.workspace.count() == 0
