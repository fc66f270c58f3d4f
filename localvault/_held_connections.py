"""The SQLite connections this process holds for its vaults (one per thread), and what a fork leaves of them.

SQLite keeps one record per process of the locks held on a file. A child forked from a process with a vault open
inherits the parent's connections and that record, which says the locks are held: they are the parent's, in the
kernel, for POSIX locks are not inherited. A connection the child opened itself took none of its own, so another
process saw no reader and reset the write-ahead log under it: the child's commits were lost, and the database
could be damaged (an embedding journey: 50 of 60 commits lost; three of three daemonised runs malformed). So the
child closes every inherited connection at the fork (:func:`_close_inherited`), which leaves the parent's as they
are, and its own connections then take their locks.

A connection another thread of the parent had in a transaction cannot be closed in the child: its rollback would
write into the log's index, which the parent shares. It is kept open, unused, and the child refuses to open that
vault (:func:`refuse_if_forked_mid_transaction`). Python's own clean-up after a fork frees the other threads'
objects, which closes their connections whatever their state: the strong references here keep them for the check.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import TYPE_CHECKING

from .errors import StorageError

if TYPE_CHECKING:
    import sqlite_utils

#: This process's open connections (their vault database's real path), by ``id`` of their :class:`Held`.
_OPEN: dict[int, tuple[sqlite3.Connection, str]] = {}
#: Connections a fork left in a transaction, kept open in this child, and their databases' paths.
_KEPT_FROM_PARENT: list[sqlite3.Connection] = []
_FORKED_MID_TRANSACTION: set[str] = set()


class Held:
    """A thread's connection; closed when the thread ends (its ``threading.local`` goes), or by the thread itself
    once the vault is closed; in a process forked since, at the fork."""

    __slots__ = ("conn", "utils", "pid")

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.conn = conn
        self.utils: sqlite_utils.Database | None = None
        self.pid = os.getpid()
        _OPEN[id(self)] = (conn, os.path.realpath(path))

    def close(self) -> None:
        """Close the connection, unless this is a process forked since it was opened (closed at the fork)."""
        if os.getpid() == self.pid:
            _OPEN.pop(id(self), None)
            self.conn.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # (at interpreter exit, or closed already)
            pass


def refuse_if_forked_mid_transaction(path: str) -> None:
    """StorageError if this process was forked while its parent had the database at ``path`` in a transaction."""
    if os.path.realpath(path) in _FORKED_MID_TRANSACTION:
        raise StorageError(f"this process was forked while another thread of its parent was writing to {path}; "
                           "SQLite's locks cannot work for it here: open the vault in a process forked before the "
                           "vault was opened, or started with multiprocessing's 'spawn' or 'forkserver'")


def _close_inherited() -> None:
    inherited = list(_OPEN.values())
    _OPEN.clear()
    for conn, path in inherited:
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                _KEPT_FROM_PARENT.append(conn)
                _FORKED_MID_TRANSACTION.add(path)
            else:
                conn.close()


os.register_at_fork(after_in_child=_close_inherited)
