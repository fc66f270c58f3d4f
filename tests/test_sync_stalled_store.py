"""A store that stops reading in the middle of a part (a stopped process, a frozen proxy): its kernel keeps the
connection open and answers the window probes, so the upload's send waited for ever, and the sync with it.

The store is reached through a TCP relay in front of the suite's moto server that, once told to freeze, stops
reading what the client sends: the client's bytes pile up in the buffers until the window shuts, as they did
against a moto process stopped with SIGSTOP.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from localvault import OfflineError, Vault
from localvault.sync import Remote, retry, s3_client
from localvault.sync import bucket as bucket_module

USER_A = "0a0a0a0a-0000-4000-8000-00000000000a"


class FreezingRelay:
    """Relays TCP connections to ``target``; a connection whose client sends a request with ``freeze_on`` in it
    is frozen from then on: nothing more is read from its client (until :meth:`release`)."""

    def __init__(self, target: tuple[str, int], freeze_on: bytes) -> None:
        self._target = target
        self._freeze_on = freeze_on
        self.froze = threading.Event()
        self.frozen_requests = 0  # (each attempt at a part: botocore's, and the sync's retries)
        self._released = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            # A small receive buffer: the window shuts soon after the relay stops reading.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and self._freeze_on in data:
                    self.frozen_requests += 1
                    self.froze.set()
                    self._released.wait()  # (reads nothing more: the client's sends pile up)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def release(self) -> None:
        """Read again, and stop taking connections."""
        self._released.set()
        self._listener.close()
        for sock in self._sockets:
            sock.close()


@contextmanager
def frozen_on_parts(s3_bucket: Any) -> Iterator[tuple[FreezingRelay, dict[str, Any]]]:
    """A relay to the suite's S3 server that freezes a connection once it carries a part of a multipart upload,
    and the storage options that reach the bucket through it."""
    endpoint = urlparse(s3_bucket.storage_options["client_kwargs"]["endpoint_url"])
    relay = FreezingRelay((endpoint.hostname or "127.0.0.1", endpoint.port or 80), b"partNumber=")
    try:
        yield relay, dict(s3_bucket.storage_options,
                          client_kwargs={"endpoint_url": f"http://127.0.0.1:{relay.port}", "region_name": "us-east-1"})
    finally:
        relay.release()


def test_a_store_that_stops_reading_mid_part_is_offline_not_waited_on_for_ever(
        tmp_path: Path, server: str, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_client, "SEND_TIMEOUT_MS", 1500, raising=False)  # (the fix: see s3_client)
    monkeypatch.setattr(retry, "RETRY_DELAYS", (0.05, 0.1))
    monkeypatch.setattr(retry, "RETRY_BUDGET_SECONDS", 2.0)
    monkeypatch.setattr(bucket_module, "SINGLE_PUT_BYTES", 0)  # every file goes up in parts
    big = tmp_path / "big.png"
    from PIL import Image

    # 9 MiB of noise: a first part of 8 MiB, more than the client's send buffer and the relay's receive one.
    Image.frombytes("RGB", (1536, 2048), os.urandom(1536 * 2048 * 3)).save(big, compress_level=0)
    vault = Vault.create(tmp_path / "vault", user_id=USER_A)
    vault.library.add(big, prompt="a big one")
    outcome: list[BaseException | None] = []
    with frozen_on_parts(s3_bucket) as (relay, options):
        remote = Remote(server, f"s3://{s3_bucket.name}", options)

        def sync() -> None:
            try:
                vault.sync(remote)
                outcome.append(None)
            except BaseException as exc:  # (handed to the test's thread)
                outcome.append(exc)

        started = time.monotonic()
        worker = threading.Thread(target=sync, daemon=True)
        worker.start()
        worker.join(90)
        took = time.monotonic() - started
        froze = relay.froze.is_set()
        relay.release()  # (a sync still waiting ends now: the test does not hang)
        worker.join(60)
        remote.close()
    try:
        assert froze, "the relay never saw a part: the test did not test a stalled part"
        # The part's own retries give up once (8 requests: botocore's two a call); the file's upload around them
        # does not try them all again (16), nor does a stalled attempt start the budget over.
        assert relay.frozen_requests <= 10, relay.frozen_requests
        assert took < 90, f"the sync waited on a store that stopped reading for {took:.0f} s"
        assert len(outcome) == 1 and isinstance(outcome[0], OfflineError), outcome
        assert "big" in str(outcome[0]) or "part" in str(outcome[0])
        assert vault.db.conn.execute("SELECT count(*) FROM sync_outbox").fetchone()[0] == 1  # nothing lost
    finally:
        vault.close()


def test_connections_to_the_store_carry_the_send_timeout(s3_bucket: Any) -> None:
    """What the fix rests on: the sockets s3fs's client opens to the store have TCP_USER_TIMEOUT set."""
    from localvault.sync.bucket import Bucket

    seen: list[int] = []
    real = s3_client.store_socket

    def recorded(addr_info: Any) -> socket.socket:
        sock = real(addr_info)
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
        return sock

    # A filesystem of its own: fsspec's cached one (an earlier test's, with the same options) has its client made,
    # its connections open.
    options = dict(s3_bucket.storage_options, skip_instance_cache=True)
    bucket = Bucket(f"s3://{s3_bucket.name}", options)
    connector = bucket.fs.config_kwargs["connector_args"]
    assert connector["socket_factory"] is real
    connector["socket_factory"] = recorded  # (the client is made at the first call, from these)
    bucket.fs.ls(s3_bucket.name)
    assert seen and set(seen) == {s3_client.SEND_TIMEOUT_MS}


def test_ctrl_c_while_a_part_is_stuck_says_what_it_waits_for_and_ends(
        tmp_path: Path, server: str, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The journey's Ctrl-C that printed nothing and waited on a frozen store for 11 minutes: it now says it waits
    for the uploads under way, and they end at the send timeout."""
    import signal

    monkeypatch.setattr(s3_client, "SEND_TIMEOUT_MS", 1500, raising=False)
    monkeypatch.setattr(bucket_module, "SINGLE_PUT_BYTES", 0)
    big = tmp_path / "big.png"
    from PIL import Image

    Image.frombytes("RGB", (1536, 2048), os.urandom(1536 * 2048 * 3)).save(big, compress_level=0)
    vault = Vault.create(tmp_path / "vault", user_id=USER_A)
    vault.library.add(big, prompt="a big one")
    with frozen_on_parts(s3_bucket) as (relay, options):
        remote = Remote(server, f"s3://{s3_bucket.name}", options)

        def press_ctrl_c() -> None:
            if relay.froze.wait(60):
                time.sleep(0.5)  # (the part's send is under way, stuck)
                os.kill(os.getpid(), signal.SIGINT)  # (a real signal: it wakes the main thread's wait)

        threading.Thread(target=press_ctrl_c, daemon=True).start()
        watchdog = threading.Timer(90, relay.release)  # (without the fix: the test ends, failing, not hangs)
        watchdog.start()
        started = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                vault.sync(remote)
            took = time.monotonic() - started
        finally:
            watchdog.cancel()
            remote.close()
    try:
        assert took < 60, f"Ctrl-C waited {took:.0f} s for a stuck upload"
        assert any("waiting for the 1 upload(s) under way" in r.getMessage() for r in caplog.records)
        assert vault.db.conn.execute("SELECT count(*) FROM sync_outbox").fetchone()[0] == 1
    finally:
        vault.close()


def test_sigterm_ends_a_sync_as_ctrl_c_does(tmp_path: Path, server: str, s3_bucket: Any) -> None:
    """A service manager's stop (or `timeout`) killed a sync at once, without a word, leaving the terminal's
    cursor hidden (a sync user's journey); it now ends as Ctrl-C does: exit 130, saying nothing was lost."""
    import signal
    import subprocess
    import sys

    from PIL import Image

    big = tmp_path / "big.png"  # (over 8 MiB: sent in parts, the first of which the relay holds)
    Image.frombytes("RGB", (1536, 2048), os.urandom(1536 * 2048 * 3)).save(big, compress_level=0)
    with frozen_on_parts(s3_bucket) as (relay, options):
        with Vault.create(tmp_path / "vault", user_id=USER_A) as vault:
            vault.library.add(big, prompt="a big one")
            vault.set_remote(server, f"s3://{s3_bucket.name}", options)
        proc = subprocess.Popen([sys.executable, "-m", "localvault", "--vault", str(tmp_path / "vault"), "sync"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert relay.froze.wait(60), "the sync never sent a part"
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            threading.Timer(2.0, relay.release).start()  # (the part under way then ends)
            _out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "interrupted: nothing was lost" in err and "waiting for the 1 upload(s) under way" in err, err
    with Vault.open(tmp_path / "vault") as vault:
        assert vault.db.conn.execute("SELECT count(*) FROM sync_outbox").fetchone()[0] == 1


def test_an_aiobotocore_that_refuses_socket_factory_is_not_given_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiobotocore took ``socket_factory`` among its connector_args only from its end-2025 releases (s3fs asks for
    2.19 or later): an older one refused the key, and every call to the store failed. It then gets none."""
    from aiobotocore.config import AioConfig
    from botocore.exceptions import ParamValidationError

    real = AioConfig._validate_connector_args

    def older(connector_args: Any, http_session_cls: Any) -> None:
        if "socket_factory" in connector_args:
            raise ParamValidationError(report="invalid connector_arg:socket_factory")
        real(connector_args, http_session_cls)

    monkeypatch.setattr(AioConfig, "_validate_connector_args", staticmethod(older))
    s3_client._client_takes_socket_factory.cache_clear()
    try:
        options: dict[str, Any] = {"anon": True, "config_kwargs": {"connector_args": {"keepalive_timeout": 5}}}
        s3_client.tune_s3(options)
        assert options["config_kwargs"]["connector_args"] == {"keepalive_timeout": 5}
        AioConfig(**options["config_kwargs"])  # (what s3fs makes its client with: no ParamValidationError)
    finally:
        monkeypatch.undo()
        s3_client._client_takes_socket_factory.cache_clear()
    options = {"anon": True}  # (this aiobotocore takes one)
    s3_client.tune_s3(options)
    assert options["config_kwargs"]["connector_args"] == {"socket_factory": s3_client.store_socket}
