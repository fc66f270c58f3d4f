"""A deadline on each wait for PostgreSQL's answer: a connection that stays open and passes nothing is cut.

TCP keepalives and ``tcp_user_timeout`` (:func:`localvault.sync.connection.connect`) end a link that stops
acknowledging. They cannot see a link whose far end still acknowledges and passes nothing on (a proxy or a
pooler that froze), nor a server process that was stopped (its kernel still answers the probes): there a read
waits for ever. So every wait of a sync's connection for the server (a statement, a COPY's write, a commit) is
watched, and one that sees no byte move either way for :data:`ANSWER_DEADLINE_SECONDS` has its socket shut
down: no byte received, none of what was sent acknowledged (Linux's ``TCP_INFO``; elsewhere, the wait's length).
The wait then fails as :class:`NoAnswerError`, an ``OperationalError``: the sync retries on a new connection,
then reports offline. A batch of 64 MiB sent over a slow link keeps moving, and is not cut.

No statement of a sync keeps a server that works silent that long: each waits at most a minute for a lock (its
``lock_timeout``). ``schema apply`` (an index built over a big table may take longer) does not use this.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import threading
import time
import weakref
from typing import Any

import psycopg

log = logging.getLogger(__name__)

__all__ = ["ANSWER_DEADLINE_SECONDS", "DeadlineConnection", "NoAnswerError"]

#: Seconds a wait for the server may see nothing move before its connection is cut.
ANSWER_DEADLINE_SECONDS = 120.0
#: How often the watcher looks at the waits in progress (a wait is cut at most this late).
_LOOK_EVERY_SECONDS = 1.0


class NoAnswerError(psycopg.OperationalError):
    """Nothing moved for :data:`ANSWER_DEADLINE_SECONDS` during one wait for the server; the connection was cut."""


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection whose waits for the server are cut after :data:`ANSWER_DEADLINE_SECONDS` without
    progress (no byte taken or received: a big batch on a slow link goes on as long as it moves)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._quiet_since: float | None = None
        self._cut = False
        self._socket_copy: int | None = None  # the wait's own descriptor of the socket: libpq cannot close it
        self._moved: tuple[int, int] | None = None  # the socket's (bytes acknowledged, bytes received), last seen
        self._guard = threading.Lock()

    def wait(self, *args: Any, **kwargs: Any) -> Any:  # (psycopg's signature differs between versions)
        """psycopg's wait, watched (see the module's docstring)."""
        with self._guard:
            self._cut, self._moved, self._quiet_since = False, None, time.monotonic()
            try:
                self._socket_copy = os.dup(self.pgconn.socket)
            except (OSError, psycopg.OperationalError):  # (no descriptor to copy: Windows; a closed connection)
                self._socket_copy = None
        _watcher.watch(self)
        try:
            return super().wait(*args, **kwargs)
        except psycopg.OperationalError as exc:
            if self._cut:
                raise NoAnswerError(f"PostgreSQL passed nothing for {ANSWER_DEADLINE_SECONDS:.0f} s (a frozen link "
                                    "or a stopped server); the connection was closed") from exc
            raise
        finally:
            with self._guard:
                self._quiet_since = None
                if self._socket_copy is not None:
                    os.close(self._socket_copy)
                    self._socket_copy = None

    def cut_if_late(self, now: float) -> None:
        """Shut the socket down if the wait in progress has seen nothing move for the deadline."""
        with self._guard:
            if self._quiet_since is None or self._socket_copy is None:
                return
            try:  # (through the wait's own descriptor: the socket it waits on, whatever libpq did meanwhile)
                sock = socket.socket(fileno=self._socket_copy)
            except OSError:
                return
            try:
                moved = _bytes_moved(sock)
                if moved is not None and moved != self._moved:  # the link moves (either way)
                    self._moved, self._quiet_since = moved, now
                elif now - self._quiet_since >= ANSWER_DEADLINE_SECONDS:
                    self._cut = True
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the waiting read
            except OSError:
                pass
            finally:
                sock.detach()  # (the descriptor stays the wait's, closed by it)


def _bytes_moved(sock: socket.socket) -> tuple[int, int] | None:
    """(bytes the far end acknowledged, bytes received) of a TCP socket, from Linux's ``TCP_INFO`` (its
    ``tcpi_bytes_acked`` and ``tcpi_bytes_received``); None where the system does not tell (another system, a
    Unix socket): silence is then the wait's length."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, AttributeError):
        return None
    return struct.unpack_from("=QQ", info, 120) if len(info) >= 136 and sys.platform == "linux" else None


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
                try:
                    conn.cut_if_late(now)
                except Exception:  # (this thread must outlive any one connection's trouble)
                    log.exception("watching a PostgreSQL connection's answer failed")
            del live


_watcher = _Watcher()
