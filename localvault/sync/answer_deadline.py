"""A deadline on each wait for PostgreSQL's answer: a connection that stays open and passes nothing is cut.

TCP keepalives and ``tcp_user_timeout`` (:func:`localvault.sync.schema.connect`) end a link that stops
acknowledging. They cannot see a link whose far end still acknowledges and passes nothing on (a proxy or a
pooler that froze), nor a server process that was stopped (its kernel still answers the probes): there a read
waits for ever. So every wait of a sync's connection for the server (a statement, a COPY's write, a commit) is
watched, and one that lasts :data:`ANSWER_DEADLINE_SECONDS` has its socket shut down. The wait then fails as
:class:`NoAnswerError`, an ``OperationalError``: the sync retries on a new connection, then reports offline.

No statement of a sync waits that long on a server that works: each waits at most a minute for a lock (its
``lock_timeout``), and a batch is at most 5,000 rows. ``schema apply`` (an index built over a big table may
take longer) does not use this.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref
from typing import Any

import psycopg

__all__ = ["ANSWER_DEADLINE_SECONDS", "DeadlineConnection", "NoAnswerError"]

#: Seconds one wait for the server may last before its connection is cut.
ANSWER_DEADLINE_SECONDS = 120.0
#: How often the watcher looks at the waits in progress (a wait is cut at most this late).
_LOOK_EVERY_SECONDS = 1.0


class NoAnswerError(psycopg.OperationalError):
    """The server sent nothing for :data:`ANSWER_DEADLINE_SECONDS` during one wait; the connection was cut."""


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server is cut after :data:`ANSWER_DEADLINE_SECONDS`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting_since: float | None = None
        self._cut = False
        self._guard = threading.Lock()

    def wait(self, *args: Any, **kwargs: Any) -> Any:  # (psycopg's signature differs between versions)
        """psycopg's wait, watched (see the module's docstring)."""
        self._waiting_since = time.monotonic()
        _watcher.watch(self)
        try:
            return super().wait(*args, **kwargs)
        except psycopg.OperationalError as exc:
            if self._cut:
                raise NoAnswerError(f"PostgreSQL sent nothing for {ANSWER_DEADLINE_SECONDS:.0f} s (a frozen link or "
                                    "a stopped server); the connection was closed") from exc
            raise
        finally:
            with self._guard:
                self._waiting_since = None

    def cut_if_late(self, now: float) -> None:
        """Shut the socket down if the wait in progress began :data:`ANSWER_DEADLINE_SECONDS` ago."""
        with self._guard:
            since = self._waiting_since
            if since is None or now - since < ANSWER_DEADLINE_SECONDS or self.closed:
                return
            try:
                fd = os.dup(self.pgconn.socket)
            except (psycopg.OperationalError, OSError):
                return  # libpq has closed it already: the wait is ending
            self._cut = True
        with socket.socket(fileno=fd) as sock:  # a duplicate: shutting it down wakes the waiting read
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Watcher:
    """One daemon thread, running while some :class:`DeadlineConnection` has waited; it looks every second."""

    def __init__(self) -> None:
        self._connections: weakref.WeakSet[DeadlineConnection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, conn: DeadlineConnection) -> None:
        if conn in self._connections and self._thread is not None:
            return
        with self._lock:
            self._connections.add(conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="localvault-answer-deadline", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(_LOOK_EVERY_SECONDS)
            with self._lock:
                live = [conn for conn in self._connections if not conn.closed]
                if not live:  # (the next wait starts the thread again)
                    self._connections.clear()
                    self._thread = None
                    return
            now = time.monotonic()
            for conn in live:
                conn.cut_if_late(now)
            del live


_watcher = _Watcher()
