"""A PostgreSQL connection that stays open and passes nothing: a stopped server process, a frozen link.

Keepalives cannot see either (the far end's kernel still acknowledges); each wait for the server is cut after
ANSWER_DEADLINE_SECONDS (localvault/sync/answer_deadline.py). Real PostgreSQL: its backend process is stopped
with SIGSTOP, or its traffic held by a TCP proxy that keeps its connections open and passes nothing on.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_sync_faults import _fill, _outbox, assert_mirrors

from localvault import OfflineError, Vault
from localvault.sync import Remote, answer_deadline, connection, retry
from localvault.sync.answer_deadline import DeadlineConnection


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answer_deadline, "ANSWER_DEADLINE_SECONDS", 1.0)
    monkeypatch.setattr(answer_deadline, "_LOOK_EVERY_SECONDS", 0.1)


class FreezingProxy:
    """A TCP proxy to PostgreSQL that, once frozen, keeps every connection open and passes nothing on (new ones
    are accepted and left unanswered): a link whose far end still acknowledges."""

    def __init__(self, port: int, bytes_per_second: int | None = None) -> None:
        self.upstream = ("127.0.0.1", port)
        self.bytes_per_second = bytes_per_second  # a slow link: what passes, passes at this pace
        self.frozen = threading.Event()
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        if bytes_per_second:  # (a small window, as a slow link's: what is not taken waits in the sender's queue)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not self.closing.is_set():
            for key, _ in selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    self.sockets.append(client)
                    if self.frozen.is_set():
                        continue  # taken, never answered
                    server = socket.create_connection(self.upstream)
                    self.sockets.append(server)
                    peers[client], peers[server] = server, client
                    selector.register(client, selectors.EVENT_READ)
                    selector.register(server, selectors.EVENT_READ)
                elif not self.frozen.is_set():
                    data = sock.recv(4096 if self.bytes_per_second else 65536)
                    if data and self.bytes_per_second:
                        time.sleep(len(data) / self.bytes_per_second)
                    if data:
                        peers[sock].sendall(data)
                    else:
                        selector.unregister(sock)
        selector.close()

    def close(self) -> None:
        self.closing.set()
        self.thread.join(5)
        for sock in self.sockets:
            sock.close()


@contextmanager
def frozen_link_remote(remote: Remote, s3_bucket: Any) -> Iterator[tuple[Remote, FreezingProxy]]:
    params = psycopg.conninfo.conninfo_to_dict(remote.database_url)
    proxy = FreezingProxy(int(str(params["port"])))
    params["port"] = proxy.port
    proxied = Remote(psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()}), remote.bucket_url,
                     s3_bucket.storage_options)
    try:
        yield proxied, proxy
    finally:
        proxied.close()
        proxy.close()


def test_a_stopped_server_process_is_cut_off_and_the_sync_goes_on_over_a_new_connection(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, short_deadline: None) -> None:
    """The backend serving the sync's connection stops (SIGSTOP: its kernel still acknowledges). The sync waited
    for its answer for ever; now that wait is cut and the sync goes on over a new connection."""
    _fill(vault, tmp_path, 3)
    remote.check(vault.user_id)
    backend = remote.connection().info.backend_pid
    os.kill(backend, signal.SIGSTOP)
    try:
        started = time.monotonic()
        report = vault.sync(remote)
        elapsed = time.monotonic() - started
    finally:
        os.kill(backend, signal.SIGCONT)
    assert report.rows_written == 3 and report.files_uploaded == 3
    assert elapsed < 20
    assert _outbox(vault) == 0
    assert_mirrors(vault, remote, s3_bucket)


def test_a_link_that_freezes_mid_sync_is_offline_and_the_next_sync_sends_everything(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, short_deadline: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every packet held from the moment the sync sends its rows: the sync says offline in bounded time, rather
    than waiting for ever, and nothing is lost."""
    monkeypatch.setattr(retry, "RETRY_BUDGET_SECONDS", 3.0)
    monkeypatch.setattr(connection, "CONNECT_TIMEOUT", 2)
    _fill(vault, tmp_path, 4)
    with frozen_link_remote(remote, s3_bucket) as (proxied, proxy):
        proxied.check(vault.user_id)
        real_apply = Remote.apply

        def apply_after_freezing(self: Remote, *args: Any, **kwargs: Any) -> Any:
            proxy.frozen.set()
            return real_apply(self, *args, **kwargs)

        monkeypatch.setattr(Remote, "apply", apply_after_freezing)
        started = time.monotonic()
        with pytest.raises(OfflineError) as caught:
            vault.sync(proxied)
        elapsed = time.monotonic() - started
        monkeypatch.undo()
    assert elapsed < 30
    # (the first attempt cut after 1 s; the next could not connect through the frozen link)
    assert str(caught.value).startswith("writing rows to PostgreSQL failed")
    assert "passed nothing for 1 s" in str(caught.value) or "timeout expired" in str(caught.value)
    assert _outbox(vault) == 4
    with psycopg.connect(remote.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM public.user_library").fetchone() == (0,)
    assert vault.sync(remote).rows_written == 4
    assert_mirrors(vault, remote, s3_bucket)


def test_a_wait_that_ends_in_time_is_not_cut(server: str, short_deadline: None) -> None:
    """A statement shorter than the deadline (with the watcher looking meanwhile) completes; the connection
    stays usable; a wait silent for longer than the deadline is cut as NoAnswerError, an OperationalError the sync
    retries."""
    with DeadlineConnection.connect(server, autocommit=True) as conn:
        assert conn.execute("SELECT pg_sleep(0.6), 1").fetchone() == ("", 1)
        assert conn.execute("SELECT 2").fetchone() == (2,)
        with pytest.raises(answer_deadline.NoAnswerError, match="passed nothing for 1 s"):
            conn.execute("SELECT pg_sleep(5)")
        assert conn.closed or conn.broken


def test_a_slow_link_that_keeps_moving_is_not_cut(server: str, short_deadline: None) -> None:
    """The deadline is on silence, not on a wait's length: a batch of 64 MiB over a link of a few Mbit/s takes
    minutes to send, and must not be cut (then resent, and cut, each sync). Here 600 KB at 200 KB/s each way,
    1 s deadline: 3 s waits that move all along."""
    params = psycopg.conninfo.conninfo_to_dict(server)
    proxy = FreezingProxy(int(str(params["port"])), bytes_per_second=200_000)
    try:
        params["port"] = proxy.port
        with DeadlineConnection.connect(psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()}),
                                        autocommit=True) as conn:
            started = time.monotonic()
            assert conn.execute("SELECT length(%s)", ("x" * 600_000,)).fetchone() == (600_000,)  # sent slowly
            assert time.monotonic() - started > 2.0  # (it did take longer than the deadline)
            started = time.monotonic()
            assert conn.execute("SELECT repeat('y', 600000)").fetchone() == ("y" * 600_000,)  # received slowly
            assert time.monotonic() - started > 2.0
    finally:
        proxy.close()
