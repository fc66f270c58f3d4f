"""The SQLite connections this process holds for its vaults (one per thread), and what a fork leaves of them.

SQLite keeps one record per process of the locks held on a file. A child forked from a process with a vault open
inherits the parent's connections and that record, which says the locks are held: they are the parent's, in the
kernel, for POSIX locks are not inherited. A connection the child opened itself took none of its own, so another
process saw no reader and reset the write-ahead log under it: the child's commits were lost, and the database
could be damaged (an embedding journey: 50 of 60 commits lost; three of three daemonised runs malformed).

Nor can the child close them: closing takes mutexes a thread of the parent may have held at the fork (the child
hung, 7 of 40 times), rolls back into the log's index the parent shares what a thread of the parent had under way
(its transaction then read a malformed database), and leaves a connection with a statement under way open anyway
(a review). So at the fork, with no call into SQLite, the child keeps every inherited connection open for good,
unused (:func:`_keep_inherited`), and refuses to open those vaults (:func:`refuse_if_inherited`). Python's own
clean-up after a fork frees the other threads' objects, and would close their connections: the references here
keep them.
"""

from __future__ import annotations

import collections
import ctypes
import os
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import StorageError

if TYPE_CHECKING:
    import sqlite_utils

#: This process's open connections, and their database file's (device, inode), by ``id`` of their :class:`Held`.
_OPEN: dict[int, tuple[sqlite3.Connection, tuple[int, int]]] = {}
#: The (device, inode) of the databases this process inherited open connections to through a fork.
_INHERITED: set[tuple[int, int]] = set()
#: Connections being made (in ``sqlite3.connect``, which lets go of the GIL), by their database's (device, inode).
_OPENING: collections.Counter[tuple[int, int]] = collections.Counter()
#: Resolved here rather than in a child at its fork.
_INCREF = ctypes.pythonapi.Py_IncRef


def _file_key(path: str) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino


class Held:
    """A thread's connection; closed when the thread ends (its ``threading.local`` goes), or by the thread itself
    once the vault is closed; never in a process forked since (see the module's docstring)."""

    __slots__ = ("conn", "utils", "pid")

    def __init__(self, conn: sqlite3.Connection, key: tuple[int, int]) -> None:
        """Hold ``conn``, a connection just made to the database file ``key`` (device, inode), before its first
        statement (a fork while it runs must count it open); see :func:`hold_new`."""
        self.conn = conn
        self.utils: sqlite_utils.Database | None = None
        self.pid = os.getpid()
        _OPEN[id(self)] = (conn, key)

    def close(self) -> None:
        """Close the connection, unless this is a process forked since it was opened."""
        if os.getpid() == self.pid:
            try:
                self.conn.close()
            finally:  # (only once closed: a fork while it closes must count it open)
                _OPEN.pop(id(self), None)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # (at interpreter exit, or closed already)
            pass


def hold_new(path: str, connect: Callable[[], sqlite3.Connection]) -> Held:
    """The connection ``connect`` makes to the database at ``path``, held. It counts as open from before it is made
    (``sqlite3.connect`` lets go of the GIL, and SQLite's mutexes may be held while a fork happens) to after its
    close; a new vault's file, which does not exist before, counts only once made."""
    key = _file_key(path) if os.path.exists(path) else None
    if key is not None:
        _OPENING[key] += 1
    try:
        conn = connect()
        return Held(conn, key or _file_key(path))
    finally:
        if key is not None:
            _OPENING[key] -= 1
            if not _OPENING[key]:
                del _OPENING[key]


def refuse_if_inherited(path: str) -> None:
    """StorageError if this process inherited, through a fork, an open connection to the database at ``path``."""
    if _INHERITED and os.path.exists(path) and _file_key(path) in _INHERITED:
        raise StorageError(f"this process was forked from one that had {path} open (in some thread: after close(), "
                           "a thread's connection goes when that thread next uses the vault, or ends): SQLite cannot "
                           "lock it for this process (its writes could be lost, the database damaged). Open the "
                           "vault in a process "
                           "that did not inherit it open: fork before opening it (gunicorn without --preload, or "
                           "open it in post_fork), or start workers with multiprocessing's 'spawn' or 'forkserver'")


def _keep_inherited() -> None:
    """At a fork, in the child: keep every inherited connection open for good, and note its database."""
    for conn, key in _OPEN.values():
        _INCREF(ctypes.py_object(conn))  # never freed, so never closed, here
        _INHERITED.add(key)
    _INHERITED.update(_OPENING)
    _OPEN.clear()
    _OPENING.clear()


os.register_at_fork(after_in_child=_keep_inherited)
