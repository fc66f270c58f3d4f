"""Vault: one folder (vault.db, two buckets, localvault.toml) opened for one user."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import fsspec

from . import _id_prefix as id_prefix
from . import _stale_temps as stale_temps
from . import _write_intents as write_intents
from . import media, models, pending
from ._disk import TEMP_PREFIX, make_folders_durably, unlink_quietly
from ._export import export_file
from ._id_prefix import MIN_ID_PREFIX as MIN_ID_PREFIX  # (where it was)
from ._sqlite_errors import raising_vault_errors
from .collections import Collections
from .config import CONFIG_NAME, RemoteConfig, VaultConfig
from .db import DB_NAME, Database
from .errors import DuplicateError, InvalidInputError, LocalVaultError, NotFoundError, StorageError, VaultCorruptError
from .files import BUCKETS, LIBRARY_BUCKET, WORKSPACE_BUCKET, FileStore
from .library import Library
from .models import LibraryAsset, WorkspaceAsset
from .progress import ProgressCallback
from .timestamps import due
from .verify import VerifyReport, verify
from .workspace import CleanupReport, Workspace

if TYPE_CHECKING:  # the core never imports sync at run time unless asked to sync
    from .sync import Remote, SyncReport

#: Expired assets removed when a vault opens for writing; the rest wait for the next open (each one removes
#: more, until one finds none left: then none does for an hour) or an explicit cleanup.
AUTO_CLEANUP_BUDGET = 2_000
AUTO_CLEANUP_INTERVAL = timedelta(hours=1)


#: What a vault folder holds (a create cut short may have left them without the database).
_OWN_NAMES = frozenset({WORKSPACE_BUCKET, LIBRARY_BUCKET, CONFIG_NAME})
#: What a new disk or a file manager puts in any folder.
_SYSTEM_NAMES = frozenset({"lost+found", ".DS_Store", "Thumbs.db", "desktop.ini"})


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # a name too long, no permission to look
        raise StorageError(f"cannot use {path}: {exc.strerror or exc}") from None


def _entries(folder: Path) -> list[str]:
    """The names in ``folder``; none if it does not exist (or is not a folder: mkdir then says so)."""
    try:
        return os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise StorageError(f"cannot read {folder}: {exc.strerror}") from None


def _holds_files(root: Path) -> bool:
    """Whether either bucket folder of ``root`` holds a file (a vault's, whatever its database says)."""
    for bucket in (WORKSPACE_BUCKET, LIBRARY_BUCKET):
        for _folder, _dirs, names in os.walk(root / bucket):
            if names:
                return True
    return False


def _check_adoptable(root: Path) -> None:
    """Refuse a folder holding anything but what a create cut short leaves (empty buckets, its settings)."""
    strangers = sorted(name for name in _entries(root)
                       if name not in _OWN_NAMES | _SYSTEM_NAMES and not name.startswith(DB_NAME)
                       and not _is_config_temp(name))
    if strangers:
        listed = ", ".join(strangers[:3]) + (", …" if len(strangers) > 3 else "")
        raise InvalidInputError(f"{root} is not empty ({listed}); give a new or empty folder for the vault")
    if _holds_files(root):
        raise VaultCorruptError(f"{root} holds a vault's files but no {DB_NAME}: restore {DB_NAME} from a backup "
                                "rather than make a new vault there (it would take the files for orphans)")


def _is_config_temp(name: str) -> bool:
    """A ``localvault.toml`` write cut short (``.tmp-<hex>-localvault.toml``, see atomic_write_bytes)."""
    return name.startswith(TEMP_PREFIX) and name.endswith(f"-{CONFIG_NAME}")


def _empty_database(path: Path) -> bool:
    """Whether ``vault.db`` is a zero-length file with no write-ahead log: a copy or restore cut short."""
    try:
        wal = path.with_name(f"{path.name}-wal")
        return path.stat().st_size == 0 and (not wal.exists() or wal.stat().st_size == 0)
    except OSError:
        return False


def _check_creatable(root: Path) -> None:
    if _exists(root / DB_NAME):
        raise DuplicateError(f"{root} already holds a vault; open it instead")
    _check_adoptable(root)


@contextmanager
def _creating(root: Path) -> Iterator[None]:
    """An exclusive lock on the vault folder itself (flock on its descriptor; the OS drops it if we die)."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise StorageError(f"cannot open {root}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # ENOLCK on some network filesystems
            raise StorageError(f"cannot lock {root} to create the vault: {exc.strerror or exc}") from None
        if os.fstat(fd).st_nlink == 0:  # another create, which had made the folder, failed and removed it
            raise StorageError(f"another create of {root} failed meanwhile (and removed the folder); try again")
        yield
    finally:
        os.close(fd)


def _remove_if_empty(root: Path) -> None:
    try:
        root.rmdir()
    except OSError:  # not empty (or gone): leave it
        pass


def _left_user_id(root: Path) -> str | None:
    try:
        return models.check_uuid(VaultConfig.load(root).user_id, "user id")
    except LocalVaultError:  # none there, unreadable or not a UUID: a new id
        return None


@raising_vault_errors("db")
class Vault:
    """A local vault, scoped to one user.

    >>> vault = Vault.create("./vault")          # doctest: +SKIP
    >>> asset = vault.workspace.add("fox.png", prompt="a red fox", seed=42, model="sdxl")  # doctest: +SKIP
    >>> kept = vault.library.save(asset.id, title="Fox", tags=["fox"])                     # doctest: +SKIP
    """

    def __init__(self, root: Path, db: Database, files: FileStore, config: VaultConfig, user_id: str) -> None:
        self.root = root
        self.db = db
        self.files = files
        self.config = config
        self.user_id = user_id
        self.workspace = Workspace(db, files, user_id)
        self.library = Library(db, files, user_id)
        self.collections = Collections(db, user_id)

    # ------------------------------------------------------------ opening

    @classmethod
    def create(cls, path: str | Path, *, user_id: str | None = None,
               fs: fsspec.AbstractFileSystem | None = None) -> Vault:
        """Make a new vault folder (or adopt an empty one) and open it.

        ``user_id`` defaults to a new random UUID (or the one a create cut
        short left in the folder). DuplicateError if a vault is already there;
        VaultCorruptError if a vault's files are there without its database;
        InvalidInputError if the folder holds anything else. Processes
        creating one folder at once: one makes the vault, the others get
        DuplicateError.
        """
        root = models.check_path(path, "the vault folder").resolve()
        requested = models.check_uuid(user_id, "user id") if user_id is not None else None
        made = not _exists(root)
        try:
            make_folders_durably(root)
        except (FileExistsError, NotADirectoryError):  # (a file where the folder, or one above it, would be)
            raise InvalidInputError(f"{root} (or a folder above it) is a file; give a new or empty folder for the "
                                    "vault") from None
        except OSError as exc:
            raise StorageError(f"cannot create {root}: {exc.strerror}") from None
        with _creating(root):  # another create of this folder waits here, then finds the vault
            # Cleaned up under the lock: a create waiting for it must not find folders that then vanish.
            buckets_made: list[Path] = []
            db: Database | None = None
            try:
                _check_creatable(root)
                buckets_made = [root / bucket for bucket in BUCKETS if not _exists(root / bucket)]
                for name in filter(_is_config_temp, _entries(root)):
                    unlink_quietly(root / name)
                # A create cut short may have left its localvault.toml: its user id stays (nothing else was there).
                owner = requested or _left_user_id(root) or str(uuid.uuid4())
                files = FileStore(root, fs)
                files.create_buckets()
                config = VaultConfig(user_id=owner)
                config.save(root)
                db = Database.open(root / DB_NAME, create=True)
                return cls(root, db, files, config, owner)
            except BaseException:  # (a full disk, Ctrl-C): what this call made goes, if nothing else is in it
                if db is not None:  # (a Ctrl-C at the very end: the vault is whole, and stays)
                    db.close()
                elif not _exists(root / DB_NAME):
                    for folder in buckets_made:
                        _remove_if_empty(folder)
                    if made:
                        _remove_if_empty(root)
                raise

    @classmethod
    def open(cls, path: str | Path, *, user_id: str | None = None, readonly: bool = False,
             fs: fsspec.AbstractFileSystem | None = None, auto_cleanup: bool = True) -> Vault:
        """Open an existing vault as its default user (or ``user_id``).

        Opening for writing also settles leftover file deletions and (see
        :meth:`housekeeping`) removes up to 2,000 expired workspace assets.
        """
        root = models.check_path(path, "the vault folder").resolve()
        readonly, auto_cleanup = models.check_flag(readonly, "readonly"), models.check_flag(auto_cleanup, "auto_cleanup")
        if not _exists(root / DB_NAME):
            if _holds_files(root):
                raise VaultCorruptError(f"{root} holds a vault's files but no {DB_NAME}: restore {DB_NAME} from a "
                                        "backup (a new vault there would take its files for orphans)")
            if root.exists() and not root.is_dir():
                raise NotFoundError(f"{root} is a file, not a vault folder; give the vault's folder")
            raise NotFoundError(f"no vault at {root}; create one with 'localvault init {root}'")
        if _empty_database(root / DB_NAME) and _holds_files(root):  # else it would open as a new, empty vault
            raise VaultCorruptError(f"{root / DB_NAME} is empty (a copy or restore cut short?) but the vault holds "
                                    f"files: restore {DB_NAME} from a backup; nothing was changed")
        try:
            config = VaultConfig.load(root)
        except VaultCorruptError:  # a damaged or foreign vault.db is the first thing to fix, if it is one
            Database.open(root / DB_NAME, readonly=True).close()
            raise
        owner = models.check_uuid(user_id if user_id is not None else config.user_id, "user id")
        db = Database.open(root / DB_NAME, readonly=readonly)
        vault = cls(root, db, FileStore(root, fs), config, owner)
        if not readonly:
            try:
                vault.housekeeping(auto_cleanup=auto_cleanup)
            except BaseException:  # (the write lock held too long, a disk error, Ctrl-C): no connection left open
                vault.close()
                raise
        return vault

    def cleanup_due(self) -> bool:
        """Whether the last complete cleanup is more than an hour old (or none was ever finished)."""
        return due(self.db.get_meta("last_cleanup"), AUTO_CLEANUP_INTERVAL)

    def housekeeping(self, *, auto_cleanup: bool = True) -> None:
        """What opening a vault for writing does: settle queued file deletions, remove what a write killed
        between its rename and its commit left (:mod:`localvault._write_intents`), once a day the temporary files
        one killed before its rename left (:mod:`localvault._stale_temps`), and (unless
        ``auto_cleanup=False``) remove up to 2,000 expired workspace assets, unless a cleanup that left none
        expired finished less than an hour ago.

        A long-running process (the watcher) calls it now and then, since it opens its vault only once.
        """
        auto_cleanup = models.check_flag(auto_cleanup, "auto_cleanup")
        if self.db.conn.execute("SELECT 1 FROM pending_deletes LIMIT 1").fetchone():
            pending.drain(self.db, self.files)
        write_intents.settle_now(self.db, self.files)  # what a write killed before its commit left
        if stale_temps.sweep_due(self.db):  # and what one killed before its rename left
            stale_temps.sweep(self.db, self.files)
        if not auto_cleanup:
            return
        if self.cleanup_due():
            self.workspace.cleanup(max_assets=AUTO_CLEANUP_BUDGET)

    def close(self) -> None:
        """Close the vault: any later call, in any thread, raises StorageError (see :meth:`Database.close`)."""
        self.db.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ actions

    def cleanup(self, *, progress: ProgressCallback | None = None, max_assets: int | None = None) -> CleanupReport:
        """Remove every expired workspace asset (or up to ``max_assets``), rows and files.

        What :meth:`open` removed on its own is not in this report: open with
        ``auto_cleanup=False`` to have it all counted here.
        """
        return self.workspace.cleanup(progress=progress, max_assets=max_assets)

    def verify(self, *, repair: bool = False, check_hashes: bool = True,
               progress: ProgressCallback | None = None) -> VerifyReport:
        """Check rows against files (orphans, missing files, hash mismatches); ``repair`` fixes what it can.
        ``check_hashes=False`` skips reading the files (only that each exists and has its row): quick, but
        blind to damaged bytes."""
        with self.db.spilling():  # (a repair's statements may touch every row)
            return verify(self.db, self.files, repair=models.check_flag(repair, "repair"),
                          check_hashes=models.check_flag(check_hashes, "check_hashes"), progress=progress)

    def export(self, asset_id: str, destination: str | Path) -> Path:
        """Copy an asset's file (library or workspace) to ``destination``: a file named with the asset's extension
        (InvalidInputError otherwise), or a folder (one that exists, or a ``str`` ending in ``/``, which is made:
        ``pathlib`` drops a trailing slash) where it is named ``<asset id>.<ext>``. DuplicateError if the file
        exists, even one made while the copy ran: nothing is overwritten. InvalidInputError for a destination
        inside the vault's folder (the copy would be a file without a row there)."""
        dest = models.check_path(destination, "the destination")
        if Path(os.path.realpath(dest)).is_relative_to(self.root):  # (a symlink into it too)
            raise InvalidInputError(f"{dest} is inside the vault at {self.root}: export to a folder outside it")
        asset = self.get(asset_id)
        bucket, relative = self._where(asset)
        try:
            into_folder = str(destination).endswith((os.sep, "/")) or dest.is_dir()
        except OSError as exc:  # a name too long, a parent we may not enter
            raise InvalidInputError(f"cannot use {dest} as the destination: {exc.strerror or exc}") from None
        if into_folder:
            try:
                make_folders_durably(dest)
            except OSError as exc:
                raise StorageError(f"cannot make the folder {dest}: {exc.strerror or exc}") from None
            dest = dest / f"{models.check_uuid(asset_id)}{Path(relative).suffix}"
        media.check_export_name(dest, relative)
        if dest.exists():
            raise DuplicateError(f"{dest} already exists; choose another destination")
        export_file(self.files, bucket, relative, asset.sha256, asset.file_size_bytes, dest)
        return dest

    def get(self, asset_id: str) -> LibraryAsset | WorkspaceAsset:
        """A library or workspace asset of this user, by id."""
        asset_id = models.check_uuid(asset_id, "asset id")
        try:
            return self.library.get(asset_id)
        except NotFoundError:
            pass
        try:
            return self.workspace.get(asset_id)
        except NotFoundError:
            raise NotFoundError(f"no asset {asset_id} in this vault (library or workspace)") from None

    def resolve_id(self, text: str) -> str:
        """The whole id of this user's one library or workspace asset whose id starts with ``text``: at least
        :data:`MIN_ID_PREFIX` hex digits, with or without the hyphens (what a person types after ``ls``; an app
        keeps whole ids). A whole id is returned as it is (canonical), without a lookup.

        InvalidInputError when ``text`` is no id prefix, or when several assets' ids start with it (more
        characters tell them apart); NotFoundError when none does.
        """
        return id_prefix.resolve(self.db.conn, self.user_id, text)

    def locate(self, asset_id: str) -> tuple[str, str]:
        """(bucket, path) of a library or workspace asset of this user."""
        return self._where(self.get(asset_id))

    @staticmethod
    def _where(asset: LibraryAsset | WorkspaceAsset) -> tuple[str, str]:
        if isinstance(asset, LibraryAsset):
            return LIBRARY_BUCKET, asset.storage_path
        return WORKSPACE_BUCKET, asset.temp_storage_path

    def delete(self, asset_id: str) -> Literal["library", "workspace"]:
        """Delete a library or workspace asset by id; returns which one it was."""
        bucket, _ = self.locate(asset_id)
        if bucket == LIBRARY_BUCKET:
            self.library.delete(asset_id)
            return "library"
        self.workspace.delete(asset_id)
        return "workspace"

    # --------------------------------------------------------------- sync

    def set_remote(self, database_url: str, bucket_url: str, storage_options: dict[str, Any] | None = None) -> None:
        """Remember where ``sync`` pushes to (in localvault.toml, readable only by its owner).

        InvalidInputError for a URL that cannot work: a database URL that is
        not ``postgresql://…`` (or whose password needs percent-encoding), a
        bucket without a scheme (``user-library`` instead of
        ``s3://user-library``), an endpoint without ``http(s)://``.
        """
        self.db.refuse_if_readonly("set its remote")
        new = RemoteConfig.checked(database_url, bucket_url, storage_options)
        updated = dataclasses.replace(self.config, remote=new, remote_problem=None)
        updated.as_toml()  # settings TOML cannot hold are refused before anything changes
        updated.save(self.root)
        self.config = updated  # only once on disk: a refused call leaves the old remote in use

    def sync(self, remote: Remote | None = None, *, dry_run: bool = False, retry_rejected: bool = False,
             full: bool = False, progress: ProgressCallback | None = None, batch_rows: int | None = None) -> SyncReport:
        """Push the library to the server (needs the ``sync`` extra). See :func:`localvault.sync.push`."""
        from .sync import push  # imported here so the core runs without the sync extra
        from .sync.engine import BATCH_ROWS

        return push(self, remote, dry_run=dry_run, retry_rejected=retry_rejected, full=full, progress=progress,
                    batch_rows=BATCH_ROWS if batch_rows is None else batch_rows)
