"""The local SQLite store: open, configure, migrate, and run transactions.

Every write runs in ``BEGIN IMMEDIATE``: a deferred transaction that later
upgrades to a write fails at once with "database is locked" whatever
busy_timeout says, so the write lock is taken up front and waits politely.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ._disk import filesystem_type, on_read_only_filesystem
from ._held_connections import Held, hold_new, refuse_if_inherited
from ._sqlite_errors import corruption_error, is_callers_own, is_corruption
from ._sqlite_migrations import migrations, schema_version, statements
from .errors import LocalVaultError, SchemaVersionError, StorageError, VaultCorruptError

if TYPE_CHECKING:
    import sqlite_utils

DB_NAME = "vault.db"
BUSY_TIMEOUT_MS = 60_000
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "fuse.sshfs", "sshfs", "9p", "afs", "ceph",
     "glusterfs", "fuse.glusterfs", "davfs", "fuse.rclone", "fuse.s3fs", "lustre", "gpfs"}
)


class NetworkFilesystemWarning(UserWarning):
    """The vault sits on a network filesystem, where SQLite's locking is unsafe."""


def _wal_holds_changes(path: Path) -> bool:
    try:
        return os.stat(f"{path}-wal").st_size > 0
    except OSError:
        return False


class Database:
    """A vault's ``vault.db``: one SQLite connection per thread, configured for several writers.

    Each thread that uses the vault gets a connection of its own, as each
    process does: one thread's transaction is never another's, and SQLite's
    locks order their writes. A thread's connection closes when the thread
    ends, or (after :meth:`close`) when the thread next uses the vault.
    """

    def __init__(self, held: Held, path: Path, readonly: bool = False, uri: str | None = None) -> None:
        self.path = path
        self.readonly = readonly
        self._uri = uri
        self._local = threading.local()
        self._closed = False
        self._pid = os.getpid()
        self._local.held = self._hold(held)

    def _hold(self, held: Held) -> Held:
        if self._closed:  # closed while this thread opened its connection (if after this, its next use closes it)
            held.close()
            raise self._closed_error()
        return held

    def _closed_error(self) -> StorageError:
        return StorageError(f"the vault at {self.path.parent} is closed; open it again")

    def _thread_held(self) -> Held:
        if os.getpid() != self._pid:  # SQLite's connections must not cross a fork: a child's commits were lost
            raise StorageError(f"this vault was opened by process {self._pid}, before a fork: it cannot be used in "
                               "this process, nor opened again here; open it in processes that did not inherit it "
                               "open (fork before opening it, or start them with multiprocessing's 'spawn')")
        held: Held | None = getattr(self._local, "held", None)
        if self._closed:
            if held is not None and held.conn.in_transaction:  # a call under way in this thread: it completes
                return held
            self._let_go_of_this_threads()
            raise self._closed_error()
        if held is None:
            if self._uri is None:  # (a database made from a bare connection: one thread only)
                raise StorageError("this vault's database cannot be used from another thread")
            try:
                made = _connect(self._uri, self.path)
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open {self.path} for another thread ({exc})") from None
            held = self._local.held = self._hold(made)
        return held

    def _let_go_of_this_threads(self) -> None:
        """Close this thread's connection, unless a call of this thread is inside its transaction (closed here,
        never under another thread)."""
        held: Held | None = getattr(self._local, "held", None)
        if held is not None and not held.conn.in_transaction:
            self._local.held = None
            held.close()

    @property
    def conn(self) -> sqlite3.Connection:
        """The calling thread's connection (opened on its first use)."""
        return self._thread_held().conn

    @property
    def utils(self) -> sqlite_utils.Database:
        """A sqlite-utils view of the calling thread's connection, for schema and convenience queries."""
        held = self._thread_held()
        if held.utils is None:
            import sqlite_utils

            held.utils = sqlite_utils.Database(held.conn)
        return held.utils

    @classmethod
    def open(cls, path: Path, *, create: bool = False, readonly: bool = False) -> Database:
        """Open (and, with ``create``, make) a vault database and migrate it."""
        if not create and not path.exists():
            raise VaultCorruptError(f"{path} does not exist; is this a vault folder? Create one with 'localvault init'")
        refuse_if_inherited(str(path))
        fs_type = filesystem_type(path.parent)
        if fs_type in NETWORK_FILESYSTEMS:
            warnings.warn(
                f"the vault at {path.parent} is on a network filesystem ({fs_type}); SQLite locking is unsafe there, "
                "so use one process at a time or move the vault to a local disk",
                NetworkFilesystemWarning,
                stacklevel=3,
            )
        # As a URI (for mode=ro), quoted: a folder named "renders #2" or "what?" or "50%" is a name, not a
        # fragment, a query or an escape.
        uri = f"{path.absolute().as_uri()}?mode={'ro' if readonly else 'rwc'}"
        if readonly and on_read_only_filesystem(path.parent) and not os.path.exists(f"{path}-shm"):
            # SQLite cannot make the -shm file a reader of a WAL database needs there (where one is, as in
            # a snapshot of a vault in use, it reads the -wal through it). Without one, the file is read as
            # immutable: no locks, and no look at a -wal, so one holding changes is refused; and such a
            # mount must be one nothing writes to meanwhile (see docs/reliability.md).
            if _wal_holds_changes(path):
                raise StorageError(f"{path} is on a read-only filesystem and its {path.name}-wal holds changes not "
                                   "yet written into it; mount it writable once (any localvault command there "
                                   "folds them in), then read it")
            uri += "&immutable=1"
        held: Held | None = None
        try:
            held = hold_new(str(path), partial(_sqlite_connect, uri))
            conn = held.conn
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Refuse another program's database (before WAL mode would rewrite its header).
            if (int(conn.execute("PRAGMA user_version").fetchone()[0]) == 0
                    and conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone()):
                raise VaultCorruptError(f"{path} holds tables that are not a localvault's; pick another folder")
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
            _configure(conn)
            db = cls(held, path, readonly, uri)
            if not readonly:
                db._migrate()
            else:
                db._check_version()
        except BaseException as exc:  # (a damaged file, a newer schema, Ctrl-C): no connection left open
            if held is not None:
                held.close()
            if isinstance(exc, sqlite3.DatabaseError) and (error := _open_error(exc, path, readonly)) is not None:
                raise error from None
            raise
        return db

    def close(self) -> None:
        """Close the vault: any later use, in any thread, gets a StorageError.

        This thread's connection closes now; another thread's when that thread
        next uses the vault, or ends. Never under a query another thread is
        running: Python's sqlite3 frees what that query still uses (a
        segmentation fault). A call of another thread already inside its
        transaction completes; one that has not reached it yet gets a
        StorageError (and leaves nothing behind). In a process forked since
        the vault was opened, nothing is closed: the connections are the
        parent's, kept open and unused (see :mod:`localvault._held_connections`).
        """
        self._closed = True
        held: Held | None = getattr(self._local, "held", None)
        if held is not None:
            self._local.held = None
            held.close()

    # ------------------------------------------------------------ versions

    def user_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _check_version(self) -> int:
        current, known = self.user_version(), schema_version()
        if current > known:
            raise SchemaVersionError(
                f"{self.path} was written by a newer localvault (schema {current}, this one knows {known}); "
                "upgrade localvault (from its checkout: 'git pull', then 'pip install -e .'; the name "
                "'localvault' on PyPI is another project's)"
            )
        return current

    def _migrate(self) -> None:
        if self._check_version() == schema_version():
            return
        with self.write() as conn:
            current = self._check_version()  # another process may have migrated meanwhile
            for number, script in migrations():
                if number > current:
                    for statement in statements(script):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number}")

    # -------------------------------------------------------- transactions

    @contextmanager
    def write(self, *, wait_ms: int | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): commits on success, rolls back on error.

        BEGIN runs inside the rollback's reach: a Ctrl-C that lands just after
        it must not leave the transaction (and the vault's write lock) open.
        ``wait_ms``: how long to wait for another writer's lock, if not the
        usual 60 s (a clean-up after an error should not wait that long again).
        """
        self.refuse_if_readonly()
        conn = self.conn
        try:
            if wait_ms is not None:
                conn.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _storage_error(exc, self.path) from None
            yield conn
            if os.getpid() != self._pid:  # a fork inside a transaction: the child must not end the parent's
                raise StorageError("this process was forked inside a transaction of the vault's; it is its parent's "
                                   "to end: nothing of it was committed here")
            conn.execute("COMMIT")
        except BaseException as exc:  # a Ctrl-C just before COMMIT too: still in the transaction, so rolled back
            if os.getpid() != self._pid:  # (the parent's transaction: nothing of it is this process's to end)
                raise
            if self._closed and isinstance(exc, sqlite3.ProgrammingError):  # another thread closed the vault
                raise self._closed_error() from None
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.DatabaseError):  # (a damaged database may refuse that too)
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError) and (translated := self.vault_error(exc)) is not None:
                raise translated from exc
            raise
        finally:
            if wait_ms is not None and not self._closed and os.getpid() == self._pid:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def vault_error(self, exc: sqlite3.DatabaseError) -> LocalVaultError | None:
        """The LocalVaultError one of SQLite's errors stands for (a read-only vault, a full disk, a lock held too
        long, a damaged database); None for another (a bug's, such as a broken constraint), or one the caller's
        callback raised about its own database."""
        return None if is_callers_own(exc) else _vault_error(exc, self.path)

    def refuse_if_readonly(self, to: str = "change it") -> None:
        """StorageError when the vault is closed, or was opened read-only: nothing of it (rows or its settings)
        may change."""
        self.refuse_if_closed()
        if self.readonly:
            raise StorageError(f"the vault at {self.path.parent} was opened read-only (readonly=True); open it "
                               f"without readonly to {to}")

    def refuse_if_closed(self) -> None:
        """StorageError when the vault is closed (before a call that would first meet a server or a file)."""
        if self._closed:
            self._let_go_of_this_threads()  # (as any other use after the close does)
            raise self._closed_error()

    def damage(self) -> list[str]:
        """What SQLite's own check of the database (``PRAGMA quick_check``, its first 10 findings) says is wrong;
        empty when the database is sound."""
        try:
            found = [str(row[0]) for row in self.conn.execute("PRAGMA quick_check(10)")]
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):  # locked, interrupted, an I/O error: no verdict (restoring would lose data)
                raise StorageError(f"cannot check {self.path}: {exc}; try again") from None
            return [str(exc)]
        return [] if found == ["ok"] else found

    def has_row(self, table: str, row_id: str) -> bool:
        """Whether ``table`` holds the committed row ``row_id``: asked after an error, before removing its file.

        A Ctrl-C that lands while COMMIT runs is raised just after it, so an
        error does not mean the row was not committed. When the database
        cannot tell, True: a file without a row is repaired by ``verify
        --repair``, a row without its file is lost.
        """
        try:
            return self.conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (row_id,)).fetchone() is not None
        except sqlite3.Error:
            return True

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees one snapshot."""
        conn = self.conn
        try:
            conn.execute("BEGIN")
            yield conn
        finally:
            if conn.in_transaction and os.getpid() == self._pid:  # (a fork inside: the parent's to end)
                conn.execute("COMMIT")

    @contextmanager
    def spilling(self) -> Iterator[None]:
        """Meanwhile this thread's temporary data (a statement's undo journal, a sort) goes to a file: for work
        touching very many rows in one statement (a collection of 98,000 entries released held 479 MiB in
        memory). Not always: a file costs bulk inserts ~30 %."""
        conn = self.conn
        conn.execute("PRAGMA temp_store = FILE")
        try:
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):  # (closed meanwhile)
                conn.execute("PRAGMA temp_store = MEMORY")

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM vault_meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, conn: sqlite3.Connection, key: str, value: str) -> None:
        """Set a meta value inside an open write transaction."""
        conn.execute("INSERT INTO vault_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                     (key, value))


def _connect(uri: str, path: Path) -> Held:
    """Another connection to the database at ``path``, already opened (and migrated) through ``uri``."""
    held = hold_new(str(path), partial(_sqlite_connect, uri))
    try:
        held.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _configure(held.conn)
    except BaseException:
        held.close()
        raise
    return held


def _sqlite_connect(uri: str) -> sqlite3.Connection:
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)


def _configure(conn: sqlite3.Connection) -> None:
    # FULL: a committed import whose source was then deleted (--move)
    # must survive a power cut, not only a process crash.
    conn.execute("PRAGMA synchronous = FULL")
    # What sqlite-utils sets on a connection it wraps (the vault's one connection always was): every thread's alike.
    conn.execute("PRAGMA recursive_triggers = ON")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA temp_store = MEMORY")  # (see Database.spilling: for the few statements that touch many rows)
    conn.execute("PRAGMA cache_size = -16000")


def _open_error(exc: sqlite3.DatabaseError, path: Path, readonly: bool) -> LocalVaultError | None:
    """The LocalVaultError an error met while opening the database at ``path`` stands for; None for another."""
    text = str(exc)
    if not is_corruption(exc):
        if not readonly and on_read_only_filesystem(path.parent):
            return StorageError(f"{path.parent} is on a read-only filesystem: mount it writable to change the vault "
                                "(reading it works: Vault.open(..., readonly=True), and the CLI's ls, show, export "
                                "and verify)")
        if "readonly" in text or "unable to open" in text:
            doing = "to read it" if readonly else "for writing"
            return StorageError(f"cannot open {path} {doing} ({text}); check the folder's permissions")
    return _vault_error(exc, path)  # (a damaged file; locked by a program that holds it exclusively)


def _vault_error(exc: sqlite3.DatabaseError, path: Path) -> LocalVaultError | None:
    """What one of SQLite's errors on the database at ``path`` stands for: a damaged database, or (a lock held too
    long, a full disk, a read-only file) a StorageError; None for another (a bug's)."""
    if (damaged := corruption_error(exc, path)) is not None:
        return damaged
    return _storage_error(exc, path) if isinstance(exc, sqlite3.OperationalError) else None


def _storage_error(exc: sqlite3.OperationalError, path: Path) -> StorageError:
    text = str(exc)
    if "full" in text:
        return StorageError(f"the disk holding {path} is full; free some space and try again")
    if "readonly" in text:
        return StorageError(f"{path} is read-only; check the folder's permissions")
    if "locked" in text or "busy" in text:
        return StorageError(f"{path} stayed locked by another connection (another process, or another thread of "
                            f"this one) for {BUSY_TIMEOUT_MS // 1000} s; try again")
    return StorageError(f"cannot use {path}: {text}")
