"""Sync under faults, against the real servers: PostgreSQL going down mid-sync or restarting
between syncs, an unreachable S3 server, an upload that fails once.

The PostgreSQL server is session-scoped: every test that stops it starts it
again in a ``finally``.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from PIL import Image
from servers import ProxyAnswer

from localvault import OfflineError, SyncError, Vault
from localvault.progress import ProgressEvent
from localvault.sync import Remote, engine, retry, status
from localvault.sync.bucket import Bucket

USER_A = "0a0a0a0a-0000-4000-8000-00000000000a"


def _image(folder: Path, n: int) -> Path:
    path = folder / f"fault{n}.png"
    Image.new("RGB", (12, 12), (n % 256, 99, (n * 13) % 256)).save(path)
    return path


def _fill(vault: Vault, folder: Path, count: int, start: int = 0) -> list[str]:
    return [vault.library.add(_image(folder, n), prompt=f"fault {n}", seed=n, title=f"t{n}").id
            for n in range(start, start + count)]


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault.create(tmp_path / "vault", user_id=USER_A)
    yield v
    v.close()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "RETRY_DELAYS", (0.05, 0.1, 0.2))


@contextmanager
def through_proxy(remote: Remote, s3_bucket: Any, answer: Callable[[str, str, bytes], tuple[int, bytes] | None],
                  ) -> Iterator[Remote]:
    """``remote`` with its bucket reached through a proxy in front of moto, where ``answer`` may reply instead of
    the store (a fault moto cannot be made to give)."""
    from servers import s3_proxy

    with s3_proxy(s3_bucket.storage_options["client_kwargs"]["endpoint_url"], answer) as endpoint:
        options = dict(s3_bucket.storage_options, client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"})
        proxied = Remote(remote.database_url, remote.bucket_url, options)
        try:
            yield proxied
        finally:
            proxied.close()


def _outbox(vault: Vault) -> int:
    return int(vault.db.conn.execute("SELECT count(*) FROM sync_outbox").fetchone()[0])


def assert_mirrors(vault: Vault, remote: Remote, s3_bucket: Any) -> None:
    """Server rows and bucket objects equal the local library: same ids, titles, sha256, one object each."""
    local = {r[0]: r[1:] for r in vault.db.conn.execute(
        "SELECT id, title, sha256, updated_at, storage_path, file_size_bytes FROM user_library")}
    with psycopg.connect(remote.database_url) as conn:
        rows = conn.execute("SELECT id, title, sha256, updated_at FROM public.user_library").fetchall()
    assert len(rows) == len({r[0] for r in rows})  # no duplicates
    assert {str(r[0]): (r[1], r[2]) for r in rows} == {k: (v[0], v[1]) for k, v in local.items()}
    opts = s3_bucket.storage_options
    client = boto3.client("s3", endpoint_url=opts["client_kwargs"]["endpoint_url"], aws_access_key_id=opts["key"],
                          aws_secret_access_key=opts["secret"], region_name="us-east-1")
    objects = {o["Key"]: o["Size"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.name)
               for o in page.get("Contents", [])}
    assert objects == {v[3]: v[4] for v in local.values()}
    assert _outbox(vault) == 0


def test_postgres_stopped_mid_sync_then_back(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path,
                                             postgres_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server dies once the upload stage began: the sync retries and completes when it is back."""
    monkeypatch.setattr(retry, "RETRY_DELAYS", (0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0))
    _fill(vault, tmp_path, 4)
    stopped = threading.Event()
    restarter: threading.Thread | None = None

    def on_progress(event: ProgressEvent) -> None:
        nonlocal restarter
        if event.stage == "upload" and not stopped.is_set():
            stopped.set()
            postgres_server.stop("fast")
            assert not postgres_server.is_running()

            def back() -> None:
                time.sleep(1.0)
                postgres_server.start()

            restarter = threading.Thread(target=back)
            restarter.start()

    try:
        try:
            report = vault.sync(remote, progress=on_progress)
        except OfflineError:  # acceptable: the server was away longer than the retries
            report = None
        assert stopped.is_set()
        if restarter is not None:
            restarter.join(60)
        postgres_server.ensure_running()
        if report is None:
            assert _outbox(vault) == 4
            report = vault.sync(remote)
        assert report.rows_written == 4 and report.rejected == 0
        assert_mirrors(vault, remote, s3_bucket)
        # The next sync after the outage works as usual, with no duplicates.
        _fill(vault, tmp_path, 2, start=10)
        report = vault.sync(remote)
        assert report.rows_written == 2 and report.files_uploaded == 2
        assert_mirrors(vault, remote, s3_bucket)
    finally:
        if restarter is not None:
            restarter.join(60)
        postgres_server.ensure_running()


def test_postgres_stopped_for_good_is_offline_and_loses_nothing(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                tmp_path: Path, postgres_server: Any,
                                                                fast_retries: None) -> None:
    _fill(vault, tmp_path, 3)

    def on_progress(event: ProgressEvent) -> None:
        if event.stage == "upload" and postgres_server.is_running():
            postgres_server.stop("immediate")

    try:
        with pytest.raises(OfflineError) as caught:
            vault.sync(remote, progress=on_progress)
        assert "PostgreSQL" in str(caught.value) and "\n" not in str(caught.value)
        assert _outbox(vault) == 3
        assert not status(vault, remote).online
    finally:
        postgres_server.ensure_running()
    report = vault.sync(remote)
    assert report.rows_written == 3 and report.files_skipped == 3 and report.files_uploaded == 0
    assert_mirrors(vault, remote, s3_bucket)


def test_connection_dropped_by_restart_between_syncs_is_reopened(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                  tmp_path: Path, postgres_server: Any) -> None:
    _fill(vault, tmp_path, 2)
    assert vault.sync(remote).rows_written == 2
    old = remote.connection()
    try:
        postgres_server.stop("fast")
    finally:
        postgres_server.ensure_running()
    _fill(vault, tmp_path, 2, start=20)
    report = vault.sync(remote)  # same Remote object, its connection died with the old server
    assert report.rows_written == 2 and report.files_uploaded == 2
    assert remote.connection() is not old
    assert_mirrors(vault, remote, s3_bucket)


def test_s3_unreachable_is_offline_and_keeps_the_outbox(vault: Vault, server: str, tmp_path: Path,
                                                        fast_retries: None) -> None:
    from servers import free_port

    port = free_port()  # a port nothing listens on
    options = {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    dead = Remote(server, "s3://nowhere", options)
    _fill(vault, tmp_path, 2)
    try:
        started = time.monotonic()
        with pytest.raises(OfflineError) as caught:
            vault.sync(dead)
        assert time.monotonic() - started < 60
        assert "bucket" in str(caught.value)
        assert _outbox(vault) == 2
        state = status(vault, dead)
        assert not state.online and "bucket" in (state.offline_reason or "") and state.pending_changes == 2
    finally:
        dead.close()
    with psycopg.connect(server) as conn:
        assert conn.execute("SELECT count(*) FROM public.user_library").fetchone()[0] == 0


def test_s3_server_gone_mid_sync_is_offline_and_keeps_the_outbox(vault: Vault, server: str, tmp_path: Path,
                                                                  fast_retries: None) -> None:
    """An S3 server that stops after the sync's start check: botocore's connection errors (not OSError) are
    retried, then reported as offline, not raised as they are."""
    from moto.server import ThreadedMotoServer
    from servers import free_port

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="gone-mid-sync")
    remote = Remote(server, "s3://gone-mid-sync", options)
    _fill(vault, tmp_path, 2)

    def stop_before_uploads(event: ProgressEvent) -> None:
        if event.stage == "upload" and event.advance == 0:
            moto.stop()

    try:
        with pytest.raises(OfflineError) as caught:
            vault.sync(remote, progress=stop_before_uploads)
        assert "uploading" in str(caught.value)
        assert _outbox(vault) == 2
    finally:
        remote.close()
        try:
            moto.stop()
        except Exception:  # already stopped
            pass
    with psycopg.connect(server) as conn:
        assert conn.execute("SELECT count(*) FROM public.user_library").fetchone()[0] == 0


def test_upload_failing_once_is_retried(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, fast_retries: None) -> None:
    ids = _fill(vault, tmp_path, 3)
    real = Bucket.upload
    calls: list[str] = []
    failed: list[str] = []
    lock = threading.Lock()

    def flaky(self: Bucket, local: Path, key: str, *args: Any) -> None:
        with lock:
            calls.append(key)
            first = not failed
            if first:
                failed.append(key)
        if first:
            raise ConnectionResetError(104, "Connection reset by peer (injected)")
        real(self, local, key, *args)

    monkeypatch.setattr(Bucket, "upload", flaky)
    report = vault.sync(remote)
    assert report.files_uploaded == 3 and report.rows_written == 3
    assert len(calls) == 4 and calls.count(failed[0]) == 2
    assert_mirrors(vault, remote, s3_bucket)
    assert {str(i) for i in ids} == set(vault.db.conn.execute("SELECT id FROM user_library").fetchall()[i][0]
                                           for i in range(3))


def test_a_key_the_bucket_refuses_is_a_clear_sync_error(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A key that may list and write but not read (a HEAD is refused) once came out as a bare 'Forbidden' (exit 8).

    The suite's moto server runs without IAM, so the store's refusal is injected.
    """
    for n in range(3):
        vault.library.add(_image(tmp_path, n), title=f"t{n}")

    def forbidden(self: Bucket, key: str) -> None:
        raise PermissionError("Forbidden")

    monkeypatch.setattr(Bucket, "head", forbidden)
    with pytest.raises(SyncError, match="access denied .*check the keys and the bucket's policies") as caught:
        vault.sync(remote)
    assert caught.value.exit_code == 11 and status(vault, remote).pending_changes == 3


def test_upload_progress_counts_over_the_whole_sync(vault: Vault, remote: Remote, s3_bucket: Any,
                                                    tmp_path: Path) -> None:
    """One bar for all batches: the totals grow batch by batch and the count never passes them."""
    for n in range(5):
        vault.library.add(_image(tmp_path, n), title=f"t{n}")
    events: list[ProgressEvent] = []
    engine.push(vault, remote, batch_rows=2, progress=events.append)
    uploads = [e for e in events if e.stage == "upload"]
    totals = [e.total for e in uploads]
    assert totals == sorted(totals) and totals[-1] == 5  # type: ignore[type-var]
    done = 0
    for event in uploads:
        done += event.advance
        assert event.total is not None and done <= event.total
    assert done == 5 and sum(e.bytes_advance for e in uploads) == uploads[-1].bytes_total


def test_a_local_file_that_cannot_be_read_is_not_blamed_on_the_keys(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """(Injected: the suite runs as root, whom permissions do not stop.)"""
    vault.library.add(_image(tmp_path, 1), title="t")

    def unreadable(self: Bucket, local: Path, *args: Any) -> None:
        raise PermissionError(13, "Permission denied", str(local))

    monkeypatch.setattr(Bucket, "upload", unreadable)
    with pytest.raises(SyncError, match="cannot read .*check its permissions"):
        vault.sync(remote)


def _s3_client(s3_bucket: Any) -> Any:
    opts = s3_bucket.storage_options
    return boto3.client("s3", endpoint_url=opts["client_kwargs"]["endpoint_url"], aws_access_key_id=opts["key"],
                        aws_secret_access_key=opts["secret"], region_name="us-east-1")


def _keys(s3_bucket: Any) -> set[str]:
    return {o["Key"] for o in _s3_client(s3_bucket).list_objects_v2(Bucket=s3_bucket.name).get("Contents", [])}


def test_an_object_the_bucket_refuses_to_delete_is_a_refused_change(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                     tmp_path: Path, fast_retries: None) -> None:
    """DeleteObjects answers 200 with a per-key <Error> where a bucket policy denies one key (moto
    cannot be made to: a proxy answers; s3fs dropped those errors). That object is not counted as deleted; its
    delete is set aside as a refused change, which status lists and --retry-rejected sends again, so it neither
    blocks the queue nor fails every later sync; a store busy for one key (InternalError) is retried."""
    import re


    ids = _fill(vault, tmp_path, 3)
    vault.sync(remote)
    paths = [vault.library.get(i).storage_path for i in ids]
    client = _s3_client(s3_bucket)
    codes = {paths[0]: ["AccessDenied"]}  # key → the per-key error codes of the next answers, one per answer

    def delete_objects(method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        if method != "POST" or "delete" not in path:
            return None
        out = []
        for key in (k.decode() for k in re.findall(rb"<Key>(.*?)</Key>", body)):
            code = codes.get(key, [None])[0]
            if code is None:
                client.delete_object(Bucket=s3_bucket.name, Key=key)
                out.append(f"<Deleted><Key>{key}</Key></Deleted>")
            else:
                codes[key] = codes[key][1:] or codes[key]
                out.append(f"<Error><Key>{key}</Key><Code>{code}</Code><Message>{code} for this key</Message></Error>")
        return 200, ('<?xml version="1.0" encoding="UTF-8"?><DeleteResult xmlns="http://s3.amazonaws.com/doc/'
                     '2006-03-01/">' + "".join(out) + "</DeleteResult>").encode()

    with through_proxy(remote, s3_bucket, delete_objects) as proxied:
        vault.library.delete(ids[0])
        vault.library.delete(ids[1])
        vault.library.update(ids[2], title="edited")
        report = vault.sync(proxied)
        assert (report.rows_written, report.rows_deleted, report.objects_deleted, report.rejected) == (1, 2, 1, 1)
        assert _keys(s3_bucket) == {paths[0], paths[2]} and _outbox(vault) == 0
        (refused,) = status(vault, remote).rejected
        assert (refused.row_id, refused.op, refused.sqlstate) == (ids[0], "delete", "bucket")
        assert f"refused to delete {paths[0]} (AccessDenied: AccessDenied for this key)" in refused.message
        assert vault.sync(proxied).rejected == 0  # the next sync is not failed by it
        with psycopg.connect(remote.database_url) as conn:
            assert conn.execute("SELECT id::text, title FROM public.user_library").fetchall() == [(ids[2], "edited")]

        codes[paths[0]] = ["InternalError", None]  # allowed now, after one busy answer
        report = vault.sync(proxied, retry_rejected=True)
        assert (report.objects_deleted, report.rejected) == (1, 0) and status(vault, remote).rejected == []
    assert_mirrors(vault, remote, s3_bucket)


def test_an_upload_the_store_refuses_for_good_is_a_sync_error_at_once(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                      tmp_path: Path) -> None:
    """A 413 EntityTooLarge (a Supabase bucket's file_size_limit; moto has no such limit: a proxy answers) is
    not retried for ~15 s and reported offline: exit 11 at once, naming the file and the store's message."""
    from servers import s3_error_xml

    (asset_id,) = _fill(vault, tmp_path, 1)
    local = vault.library.file_path(vault.library.get(asset_id))

    def too_large(method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        if method == "PUT" and body:
            return 413, s3_error_xml("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
        return None

    with through_proxy(remote, s3_bucket, too_large) as proxied:
        started = time.monotonic()
        with pytest.raises(SyncError, match="EntityTooLarge: Your proposed upload exceeds") as caught:
            vault.sync(proxied)
    assert time.monotonic() - started < 5  # no retries (the engine's delays add up to 15.5 s)
    assert caught.value.exit_code == 11 and str(local) in str(caught.value)
    assert _outbox(vault) == 1


def test_a_body_damaged_on_the_way_is_sent_again_not_refused(vault: Vault, remote: Remote, s3_bucket: Any,
                                                               tmp_path: Path, fast_retries: None) -> None:
    """400 BadDigest (or XAmzContentSHA256Mismatch): the body was damaged on the way, as botocore's and s3fs's own
    retry rules know; a 4xx, but no refusal of the file. Three in a row: more than botocore's attempts
    (BOTOCORE_ATTEMPTS), so the engine's own retries take over."""
    from servers import s3_error_xml

    _fill(vault, tmp_path, 1)
    damaged = iter([("BadDigest", "The Content-MD5 you specified did not match what we received.")] * 3)

    def damaged_twice(method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        if method == "PUT" and body and (error := next(damaged, None)) is not None:
            return 400, s3_error_xml(*error)
        return None

    with through_proxy(remote, s3_bucket, damaged_twice) as proxied:
        assert vault.sync(proxied).files_uploaded == 1
    assert next(damaged, None) is None and _outbox(vault) == 0
    assert_mirrors(vault, remote, s3_bucket)


def test_a_bucket_gone_when_objects_are_deleted_is_a_sync_error(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                 tmp_path: Path) -> None:
    """Before: s3fs's FileNotFoundError for NoSuchBucket left the sync raw (the CLI took it for a file of the user's)."""
    from servers import s3_error_xml

    ids = _fill(vault, tmp_path, 2)

    def no_bucket_for_deletes(method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        if method == "POST" and "delete" in path:
            return 404, s3_error_xml("NoSuchBucket", "The specified bucket does not exist")
        return None

    with through_proxy(remote, s3_bucket, no_bucket_for_deletes) as proxied:
        vault.sync(proxied)  # (through the proxy too: another endpoint would be another remote, synced in full)
        vault.library.delete(ids[0])
        with pytest.raises(SyncError, match="no longer exists; create it") as caught:
            vault.sync(proxied)
    assert caught.value.exit_code == 11 and _outbox(vault) == 1  # its delete stays queued


def test_a_folder_bucket_on_a_full_disk_is_a_sync_error_not_offline(vault: Vault, server: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from the bucket's disk is not a lost connection, and leaves no part of a file there.

    The disk says so as the copy is made durable (a network disk reports a full disk at fsync): a fault
    this suite cannot cause on a real disk without mounting one, so the fsync of files in the bucket's
    folder is made to fail as such a disk's does. (It used to be caused with a link to /dev/full at the
    object's path; the copy now goes through a temporary file renamed over that path.)
    """
    import errno

    from localvault import _disk

    (asset_id,) = _fill(vault, tmp_path, 1)
    key = vault.library.get(asset_id).storage_path
    bucket = tmp_path / "bucket"
    real_fsync = os.fsync

    def full_disk_fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(bucket / key).rsplit("/", 1)[0]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(_disk.os, "fsync", full_disk_fsync)
    target = Remote(server, bucket.as_uri())
    started = time.monotonic()
    try:
        with pytest.raises(SyncError, match="No space left on device") as caught:
            vault.sync(target)
    finally:
        target.close()
    assert time.monotonic() - started < 5 and caught.value.exit_code == 11
    assert _outbox(vault) == 1
    assert [p for p in bucket.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("own", ["", "keepalives_idle=60&tcp_user_timeout=9000", "service", "plain-service"],
                         ids=["defaults", "dsn-wins", "service-file-wins", "service-file-without-them"])
def test_the_connection_detects_a_dead_link(server: str, own: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A server cut off without a reset (a partition: packets dropped, which needs a firewall rule this suite
    does not set up) used to leave a sync blocked in a read for ever: TCP keepalives and a send timeout make the
    kernel declare the link dead (an OperationalError: retried, then offline). A DSN's own settings win."""
    import socket

    from localvault.sync import connection

    dsn = server + ("&" if "?" in server else "?") + own if own else server
    if own.endswith("service"):  # the settings in a pg_service.conf section, the DSN naming only the section
        from psycopg.conninfo import conninfo_to_dict

        params = {k: v for k, v in conninfo_to_dict(server).items() if v is not None}
        lines = [f"{k}={v}" for k, v in params.items()]
        if own == "service":
            lines += ["keepalives_idle=60", "tcp_user_timeout=9000"]
        (tmp_path / "pg_service.conf").write_text("[lv]\n" + "\n".join(lines) + "\n")
        monkeypatch.setenv("PGSERVICEFILE", str(tmp_path / "pg_service.conf"))
        dsn = "postgresql:///?service=lv"
    with connection.connect(dsn) as conn:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            got = {name: sock.getsockopt(socket.IPPROTO_TCP, option) for name, option in (
                ("idle", socket.TCP_KEEPIDLE), ("interval", socket.TCP_KEEPINTVL), ("count", socket.TCP_KEEPCNT),
                ("user_timeout", socket.TCP_USER_TIMEOUT))}
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        finally:
            sock.close()
    if own and own != "plain-service":
        assert (got["idle"], got["user_timeout"]) == (60, 9000)
    else:  # dead within a minute either way (the system's defaults: 2 h of silence first, no send timeout)
        assert got["idle"] + got["interval"] * got["count"] <= 60 and 0 < got["user_timeout"] <= 60_000


def test_writers_colliding_through_every_retry_is_no_offline(vault: Vault, remote: Remote, tmp_path: Path,
                                                             fast_retries: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Serialization failures (40001) or deadlocks (40P01) on every try (a server busy with conflicting pushes;
    forced here, one cannot make real ones last): the server is reachable, so the sync says so, not offline,
    and keeps every change queued."""
    _fill(vault, tmp_path, 1)

    def colliding(*_args: Any) -> Any:
        raise psycopg.errors.SerializationFailure("could not serialize access")

    monkeypatch.setattr(Remote, "apply", colliding)
    with pytest.raises(SyncError, match="colliding") as caught:
        vault.sync(remote)
    assert not isinstance(caught.value, OfflineError) and "sync again" in str(caught.value)
    assert status(vault, remote).pending_changes == 1


def _attempts_at_a_dropping_endpoint(config_kwargs: dict[str, Any] | None) -> int:
    """Connections a bucket's first request opens to an endpoint that closes each one unanswered, until the
    request fails as offline."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[bytes] = []

    def drop_every_connection() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn.recv(100))
            conn.close()

    threading.Thread(target=drop_every_connection, daemon=True).start()
    options: dict[str, Any] = {"key": "k", "secret": "s", "client_kwargs": {
        "endpoint_url": f"http://127.0.0.1:{listener.getsockname()[1]}", "region_name": "us-east-1"}}
    if config_kwargs is not None:
        options["config_kwargs"] = config_kwargs
    try:
        with pytest.raises(OfflineError, match="cannot reach the bucket"):
            Bucket("s3://dropped", options).check_reachable(create=False)
    finally:
        listener.close()
    assert accepted and all(request.startswith(b"HEAD /dropped ") for request in accepted)
    return len(accepted)


def test_an_endpoint_that_drops_every_connection_is_offline_after_botocores_two_attempts() -> None:
    """botocore makes BOTOCORE_ATTEMPTS of a request, not its default five (with up to 15 s of backoff between
    them, which kept 'status' on a laptop offline waiting); the sync's own retries come on top."""
    from localvault.sync.s3_client import BOTOCORE_ATTEMPTS

    ours = _attempts_at_a_dropping_endpoint(None)
    # (three, not five, to keep the test short: the count per botocore attempt is the same)
    three = _attempts_at_a_dropping_endpoint({"retries": {"mode": "standard", "total_max_attempts": 3}})
    assert BOTOCORE_ATTEMPTS == 2 and ours * 3 == three * 2, (ours, three)


@pytest.mark.parametrize("variable, value", [("AWS_MAX_ATTEMPTS", "3"), ("AWS_RETRY_MODE", "standard")])
def test_botocores_retries_set_by_the_user_are_kept(monkeypatch: pytest.MonkeyPatch, variable: str,
                                                     value: str) -> None:
    """An AWS environment (or profile) that sets botocore's retries keeps them: ``retries`` would override it."""
    from localvault.sync import s3_client

    monkeypatch.setattr(s3_client, "_SESSIONS", {})  # (sessions read the environment when made)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    ours: dict[str, Any] = {}
    s3_client.tune_s3(ours)
    assert ours["config_kwargs"]["retries"] == {"mode": "standard", "total_max_attempts": 2}
    monkeypatch.setattr(s3_client, "_SESSIONS", {})
    monkeypatch.setenv(variable, value)
    theirs: dict[str, Any] = {}
    s3_client.tune_s3(theirs)
    assert "retries" not in theirs["config_kwargs"]


def test_a_part_failing_for_a_moment_is_sent_again_by_itself(vault: Vault, remote: Remote, s3_bucket: Any,
                                                             tmp_path: Path, fast_retries: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A part refused three times by a busy store (500, more than botocore's attempts) goes again alone: the
    multipart upload is not aborted and started again from the file's first byte."""
    from servers import s3_error_xml

    from localvault.sync import bucket as bucket_module

    monkeypatch.setattr(bucket_module, "SINGLE_PUT_BYTES", 0)  # every file goes up in parts
    _fill(vault, tmp_path, 1)
    busy = iter([("InternalError", "We encountered an internal error. Please try again.")] * 3)
    started: list[str] = []

    def busy_on_parts(method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        if method == "POST" and path.endswith("?uploads"):
            started.append(path)
        if method == "PUT" and "partNumber=" in path and (error := next(busy, None)) is not None:
            return 500, s3_error_xml(*error)
        return None

    with through_proxy(remote, s3_bucket, busy_on_parts) as proxied:
        assert vault.sync(proxied).files_uploaded == 1
    assert next(busy, None) is None and len(started) == 1
    assert "Uploads" not in boto3.client(
        "s3", endpoint_url=s3_bucket.storage_options["client_kwargs"]["endpoint_url"], region_name="us-east-1",
        aws_access_key_id=s3_bucket.storage_options["key"],
        aws_secret_access_key=s3_bucket.storage_options["secret"]).list_multipart_uploads(Bucket=s3_bucket.name)
    assert_mirrors(vault, remote, s3_bucket)


def test_a_store_that_stops_answering_mid_sync_is_offline_without_trying_every_file(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalled link (a captive portal, a stuck Wi-Fi): the store takes connections and answers nothing. Each file
    queued behind the uploads under way went through every retry of its own, each waiting out its timeouts: a
    sync of 300 files ran 17 minutes before it said offline. Now the first file to fail for good stops the rest,
    and retries stop a while after the first failure (RETRY_BUDGET_SECONDS)."""
    monkeypatch.setattr(retry, "RETRY_BUDGET_SECONDS", 2.0)
    _fill(vault, tmp_path, 60)
    stalled = threading.Event()
    released = threading.Event()
    tried: set[str] = set()

    def answer(method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        if method == "PUT":
            tried.add(path.split("?")[0])
            if len(tried) > 5:
                stalled.set()
        if stalled.is_set():
            released.wait(60)  # a connection taken, and no answer
        return None

    try:
        with through_proxy(remote, s3_bucket, answer) as proxied:
            proxied.storage_options["config_kwargs"] = {"read_timeout": 1, "connect_timeout": 1}
            started = time.monotonic()
            with pytest.raises(OfflineError, match="uploading"):
                vault.sync(proxied)
            elapsed = time.monotonic() - started
            released.set()
    finally:
        released.set()
    assert len(tried) < 40, f"{len(tried)} of 60 files were tried against a store that had stopped answering"
    assert elapsed < 30
    assert _outbox(vault) == 60  # nothing lost: the next sync sends it all
    report = vault.sync(remote)
    assert report.rows_written == 60
    assert_mirrors(vault, remote, s3_bucket)


def test_a_row_locked_by_a_transaction_left_open_is_a_sync_error_not_a_wait_for_ever(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A web app's (or an admin's) transaction left open on one of the user's rows held the sync without a word,
    for as long as it stayed open. Now the sync's statements wait LOCK_TIMEOUT, are retried, then it says so."""
    from localvault.sync import remote as remote_module

    monkeypatch.setattr(remote_module, "LOCK_TIMEOUT", "300ms")
    monkeypatch.setattr(retry, "RETRY_DELAYS", (0.05, 0.1))
    ids = _fill(vault, tmp_path, 2)
    vault.sync(remote)
    vault.library.update(ids[0], title="edited here")
    with psycopg.connect(remote.database_url) as holder:
        holder.execute("UPDATE public.user_library SET tags = tags WHERE id = %s", (ids[0],))  # and left open
        with pytest.raises(SyncError, match="another session kept a lock on rows this sync writes") as caught:
            vault.sync(remote)
        assert caught.value.exit_code == 11 and _outbox(vault) == 1
        holder.rollback()
    assert vault.sync(remote).rows_written == 1
    assert_mirrors(vault, remote, s3_bucket)


def test_retries_stop_a_while_after_the_first_failure_unless_an_attempt_got_somewhere(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempts that each wait out a timeout stop RETRY_BUDGET_SECONDS after the first failure; an attempt that ran
    longer than that (a big file's upload, cut at its end) starts the budget over, as six attempts did before."""
    monkeypatch.setattr(retry, "RETRY_BUDGET_SECONDS", 0.3)
    monkeypatch.setattr(retry, "RETRY_DELAYS", (0.01,) * 5)
    calls: list[float] = []

    def hanging() -> None:
        calls.append(time.monotonic())
        time.sleep(0.2)  # a timeout waited out
        raise ConnectionResetError("no answer")

    with pytest.raises(OfflineError, match="failed after [23] attempts"):  # (not 6)
        retry.retrying(hanging, "checking")

    uploads: list[float] = []

    def long_then_fine() -> str:
        uploads.append(time.monotonic())
        if len(uploads) <= 4:
            time.sleep(0.4)  # each attempt got somewhere before the link dropped
            raise ConnectionResetError("dropped")
        return "sent"

    assert retry.retrying(long_then_fine, "uploading") == "sent" and len(uploads) == 5


def test_a_big_file_waiting_for_its_turn_is_not_sent_once_the_sync_stops(s3_bucket: Any, tmp_path: Path) -> None:
    """The first file to fail stops the others: a multipart upload checks the stop when its turn comes and
    between parts, and leaves no upload open on the store."""
    import hashlib

    from localvault.sync.bucket import SINGLE_PUT_BYTES
    from localvault.sync.retry import RetryStopped

    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(SINGLE_PUT_BYTES + 1))
    bucket = Bucket(f"s3://{s3_bucket.name}", s3_bucket.storage_options)
    stop = threading.Event()
    stop.set()
    try:
        with pytest.raises(RetryStopped):
            bucket.upload(big, "u/big.mp4", hashlib.sha256(big.read_bytes()).hexdigest(), big.stat().st_size,
                          "video/mp4", stop)
    finally:
        bucket.close()
    client = boto3.client("s3", endpoint_url=s3_bucket.storage_options["client_kwargs"]["endpoint_url"],
                          aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    assert client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=s3_bucket.name).get("KeyCount") == 0


def test_retried_uploads_are_warned_of_once_per_reason(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path,
                                                       fast_retries: None, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """While uploads were retried the progress bar stood still and nothing said why. Each retry is logged now
    (the CLI prints localvault's warnings above its bar): a warning once per reason, the others alike at INFO."""
    import logging

    from servers import s3_error_xml

    monkeypatch.setattr(retry, "_warned", {})
    _fill(vault, tmp_path, 6)
    failures = iter(range(24))  # the first PUTs all fail alike (botocore's own second attempt included)

    def busy(method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        if method == "PUT" and next(failures, None) is not None:
            return 503, s3_error_xml("SlowDown", "Please reduce your request rate.")
        return None

    with caplog.at_level(logging.INFO, logger="localvault.sync.retry"), \
            through_proxy(remote, s3_bucket, busy) as proxied:
        assert vault.sync(proxied).files_uploaded == 6
    retries = [r for r in caplog.records if "trying again in" in r.getMessage()]
    warned = [r.getMessage() for r in retries if r.levelno == logging.WARNING]
    assert len(retries) > 1 and len(warned) == 1, [r.getMessage() for r in retries]
    assert warned[0].startswith("uploading ") and "reduce your request rate" in warned[0]
    assert "trying again in 0.05 s (attempt 2 of 4)" in warned[0]  # (fast_retries: three delays)
    assert_mirrors(vault, remote, s3_bucket)


def test_retries_whose_reasons_name_each_file_are_warned_of_once(monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A store cut off mid-upload fails each file with its own URL in the reason: 19 warnings of 300 characters,
    one per file, were printed where one says it all."""
    import logging

    from botocore.exceptions import EndpointConnectionError

    monkeypatch.setattr(retry, "_warned", {})
    with caplog.at_level(logging.INFO, logger="localvault.sync.retry"):
        for n in range(5):
            cut = EndpointConnectionError(endpoint_url=f"http://127.0.0.1:9/user-library/u/{n:04d}.png")
            retry._tell_retry(f"uploading /vault/user-library/u/{n:04d}.png", cut, 1, 0.5)
        retry._tell_retry("uploading /vault/user-library/u/9.png", ConnectionRefusedError(111, "Connection refused"),
                          1, 0.5)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "0000.png" in warned[0] and "Connection refused" in warned[1], warned
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 4


def test_a_multipart_upload_left_by_a_killed_sync_is_aborted_by_the_next_one(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync killed outright (SIGKILL, a power cut) while sending a big file left its upload open on the store,
    its parts billed until aborted (Ctrl-C aborts it). Each upload is noted in the vault while under way: the next
    sync aborts what the note names, and never another machine's upload of the same key still running."""
    from localvault.sync import bucket as bucket_module
    from localvault.sync.open_uploads import OpenUploads

    monkeypatch.setattr(bucket_module, "SINGLE_PUT_BYTES", 0)  # every file goes up in parts
    client = boto3.client("s3", endpoint_url=s3_bucket.storage_options["client_kwargs"]["endpoint_url"],
                          aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    killed = client.create_multipart_upload(Bucket=s3_bucket.name, Key="u/killed.mp4")["UploadId"]
    client.upload_part(Bucket=s3_bucket.name, Key="u/killed.mp4", UploadId=killed, PartNumber=1, Body=b"x" * 1024)
    OpenUploads(vault.db).opened(s3_bucket.name, "u/killed.mp4", killed)  # as the killed sync noted it
    running = client.create_multipart_upload(Bucket=s3_bucket.name, Key="u/killed.mp4")["UploadId"]  # elsewhere
    _fill(vault, tmp_path, 1)

    report = vault.sync(remote)

    assert report.files_uploaded == 1
    still_open = client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in still_open] == [("u/killed.mp4", running)]
    assert OpenUploads(vault.db).left() == []  # the killed one's note, and this sync's own upload's, are gone


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> int:
    """Every file goes up in parts of 4 KiB (moto takes parts that small, as real stores do not)."""
    import moto.s3.models

    from localvault.sync import bucket as bucket_module
    from localvault.sync import multipart

    monkeypatch.setattr(bucket_module, "SINGLE_PUT_BYTES", 0)
    monkeypatch.setattr(multipart, "STREAM_BLOCK", 4096)
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 256)
    return 4096


def _interrupted_after_two_parts(vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, part_size: int,
                                 add: bool = True, also: ProxyAnswer | None = None) -> tuple[str, int]:
    """A sync of one new file (``add``) of several parts that loses the store after its second part (offline); the
    asset's id and its number of parts. ``also`` may answer other requests."""
    import re

    from servers import s3_error_xml

    if add:
        noise = tmp_path / "noise.png"
        Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(noise)
        vault.library.add(noise)
    asset = vault.library.list().items[0]
    parts = -(-asset.file_size_bytes // part_size)
    assert parts >= 3

    def down_after_two_parts(method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        found = re.search(r"partNumber=(\d+)", path)
        if method == "PUT" and found and int(found.group(1)) > 2:
            return 503, s3_error_xml("ServiceUnavailable", "Please reduce your request rate.")
        return also(method, path, body) if also is not None else None

    with pytest.MonkeyPatch.context() as once, through_proxy(remote, s3_bucket, down_after_two_parts) as proxied:
        once.setattr(retry, "RETRY_DELAYS", ())  # offline at the first failure: the sync's retries are not tested here
        with pytest.raises(OfflineError):
            vault.sync(proxied)
    return asset.id, parts


def test_an_interrupted_big_upload_goes_on_from_the_parts_the_store_holds(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, fast_retries: None, small_parts: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A link lost in the middle of a big file (or Ctrl-C, or a kill) aborted its multipart upload, and the next
    attempt sent the file again from its first byte: a 1 GiB video over a slow uplink lost what it had sent at
    each drop. The upload now stays open, noted with the file's sha256, and the next sync (or the sync's own
    retry) sends only the parts the store lacks."""
    from localvault.sync.open_uploads import OpenUploads

    asset_id, parts = _interrupted_after_two_parts(vault, remote, s3_bucket, tmp_path, small_parts)
    open_now = _s3_client(s3_bucket).list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])
    assert len(open_now) == 1 and len(OpenUploads(vault.db).left()) == 1
    # The note keeps the [bucket, key, id] entries an older localvault reads (it crashed on a fourth item).
    assert [len(entry) for entry in json.loads(vault.db.get_meta("open_multipart_uploads") or "[]")] == [3]

    seen: list[tuple[str, str]] = []
    with through_proxy(remote, s3_bucket, lambda method, path, body: seen.append((method, path))) as proxied:
        assert vault.sync(proxied).files_uploaded == 1

    assert not [path for method, path in seen if method == "POST" and path.endswith("?uploads")]  # none created
    assert _parts_sent(seen) == list(range(3, parts + 1))
    assert _s3_client(s3_bucket).list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    assert OpenUploads(vault.db).left() == []
    assert_mirrors(vault, remote, s3_bucket)  # the object is the file, byte for byte (its sha256)
    assert vault.library.get(asset_id).storage_path in _keys(s3_bucket)


def test_an_upload_left_open_is_aborted_once_its_file_is_not_to_be_sent(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, fast_retries: None, small_parts: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload kept open for the next sync, whose asset is deleted meanwhile: that sync's end aborts it (its
    parts are billed until then). And a file that no longer matches its row when the upload is gone on with
    aborts it, as a first attempt's would."""
    from localvault.sync.open_uploads import OpenUploads

    asset_id, _ = _interrupted_after_two_parts(vault, remote, s3_bucket, tmp_path, small_parts)
    vault.library.delete(asset_id)
    vault.sync(remote)
    assert _s3_client(s3_bucket).list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    assert OpenUploads(vault.db).left() == []

    damaged_id, _ = _interrupted_after_two_parts(vault, remote, s3_bucket, tmp_path, small_parts)
    local = Path(vault.library.file_path(damaged_id))
    data = bytearray(local.read_bytes())
    data[-100] ^= 0xFF  # the same size, other bytes: in a part not yet sent
    local.chmod(0o644)
    local.write_bytes(bytes(data))
    with pytest.raises(SyncError, match="no longer matches the sha256"):
        vault.sync(remote)
    assert _s3_client(s3_bucket).list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    assert OpenUploads(vault.db).left() == []


def _parts_sent(seen: list[tuple[str, str]]) -> list[int]:
    import re

    return sorted(int(re.search(r"partNumber=(\d+)", path).group(1))  # type: ignore[union-attr]
                  for method, path in seen if method == "PUT" and "partNumber=" in path)


def test_a_held_part_that_is_not_the_files_is_sent_again(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, fast_retries: None, small_parts: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A part the store holds is kept only when its size and MD5 are those of the file's bytes there: the object
    is checked by its size and the sha256 noted at its creation, which a wrong part would not change."""
    import hashlib

    from localvault.sync.open_uploads import OpenUploads

    asset_id, parts = _interrupted_after_two_parts(vault, remote, s3_bucket, tmp_path, small_parts)
    (bucket_name, key, upload_id), = OpenUploads(vault.db).left()
    _s3_client(s3_bucket).upload_part(Bucket=bucket_name, Key=key, UploadId=upload_id, PartNumber=1,
                                      Body=os.urandom(small_parts))  # the same size, other bytes
    seen: list[tuple[str, str]] = []
    with through_proxy(remote, s3_bucket, lambda method, path, body: seen.append((method, path))) as proxied:
        assert vault.sync(proxied).files_uploaded == 1
    assert _parts_sent(seen) == [1, *range(3, parts + 1)]
    stored = _s3_client(s3_bucket).get_object(Bucket=bucket_name, Key=key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == vault.library.get(asset_id).sha256


def test_an_upload_whose_parts_the_store_will_not_list_is_aborted_and_sent_whole(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, fast_retries: None, small_parts: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys without s3:ListMultipartUploadParts (a narrow IAM policy): the upload left open could not be gone on
    with, and each new attempt left one more open, billed, and noted (a review). It is aborted now."""
    from servers import s3_error_xml

    from localvault.sync.open_uploads import OpenUploads

    _, parts = _interrupted_after_two_parts(vault, remote, s3_bucket, tmp_path, small_parts)
    seen: list[tuple[str, str]] = []

    def no_listing_of_parts(method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        seen.append((method, path))
        if method == "GET" and "uploadId=" in path:
            return 403, s3_error_xml("AccessDenied", "Access Denied")
        return None

    for _again in range(2):  # interrupted again: one upload open, not one more each time
        _interrupted_after_two_parts(vault, remote, s3_bucket, tmp_path, small_parts, add=False,
                                     also=no_listing_of_parts)
        assert len(_s3_client(s3_bucket).list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])) == 1
        assert len(OpenUploads(vault.db).left()) == 1
    seen.clear()
    with through_proxy(remote, s3_bucket, no_listing_of_parts) as proxied:
        assert vault.sync(proxied).files_uploaded == 1
    assert _parts_sent(seen) == list(range(1, parts + 1))
    assert _s3_client(s3_bucket).list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    assert OpenUploads(vault.db).left() == []


def test_a_lost_creation_answer_does_not_abort_the_upload_to_go_on_with(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, fast_retries: None, small_parts: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync's start aborts the uploads of a key whose creation's answer was lost: all of that key's, the one
    noted to be gone on with included, until a review. That one is spared now."""
    from localvault.sync.open_uploads import OpenUploads

    _, parts = _interrupted_after_two_parts(vault, remote, s3_bucket, tmp_path, small_parts)
    (bucket_name, key, _id), = OpenUploads(vault.db).left()
    OpenUploads(vault.db).creating(bucket_name, key)  # then the store made one, and its answer was lost
    lost = _s3_client(s3_bucket).create_multipart_upload(Bucket=bucket_name, Key=key)["UploadId"]
    seen: list[tuple[str, str]] = []
    with through_proxy(remote, s3_bucket, lambda method, path, body: seen.append((method, path))) as proxied:
        assert vault.sync(proxied).files_uploaded == 1
    assert _parts_sent(seen) == list(range(3, parts + 1))
    assert lost not in {u["UploadId"] for u in
                        _s3_client(s3_bucket).list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])}
    assert OpenUploads(vault.db).left() == []


def test_an_upload_aborted_under_a_running_sync_is_made_again(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, fast_retries: None, small_parts: int) -> None:
    """A lifecycle rule (or a copy of this vault tidying up) aborted the upload while its parts went up: the
    store's NoSuchUpload was read as "the bucket no longer exists" (exit 11). A new upload is made now, in the
    same sync."""
    import re

    from servers import s3_error_xml

    noise = tmp_path / "noise.png"
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(noise)
    asset = vault.library.add(noise)
    aborted: list[str] = []

    def abort_at_part_two(method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        found = re.search(r"partNumber=2&uploadId=([^&]+)|uploadId=([^&]+)&partNumber=2(?!\d)", path)
        if method == "PUT" and found and not aborted:
            upload_id = found.group(1) or found.group(2)
            _s3_client(s3_bucket).abort_multipart_upload(Bucket=s3_bucket.name, Key=asset.storage_path,
                                                         UploadId=upload_id)
            aborted.append(upload_id)
            return 404, s3_error_xml("NoSuchUpload", "The specified upload does not exist.")  # (moto: a 500)
        return None

    with through_proxy(remote, s3_bucket, abort_at_part_two) as proxied:
        assert vault.sync(proxied).files_uploaded == 1
    assert aborted
    assert _s3_client(s3_bucket).list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    assert_mirrors(vault, remote, s3_bucket)


def test_an_upload_created_just_before_a_kill_is_aborted_by_the_next_sync(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between the store's creation of an upload and the vault's note of its id, a sync left an upload
    that no note named, open for good. The intent is noted first: the next sync aborts the key's uploads since."""
    from localvault.sync import bucket as bucket_module
    from localvault.sync.open_uploads import OpenUploads

    monkeypatch.setattr(bucket_module, "SINGLE_PUT_BYTES", 0)
    client = _s3_client(s3_bucket)
    OpenUploads(vault.db).creating(s3_bucket.name, "u/killed.mp4")  # noted, then the store created it: killed
    client.create_multipart_upload(Bucket=s3_bucket.name, Key="u/killed.mp4")
    other = client.create_multipart_upload(Bucket=s3_bucket.name, Key="u/another.mp4")["UploadId"]
    _fill(vault, tmp_path, 1)

    assert vault.sync(remote).files_uploaded == 1
    still_open = client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in still_open] == [("u/another.mp4", other)]
    assert OpenUploads(vault.db).left() == []


def test_an_upload_whose_creation_answer_was_lost_is_not_left_open(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store created the upload, and its answer was lost (a dropped connection): the retry made another, and
    the first stayed open, after a sync that reported success. (The loss is injected: a proxy cutting the one
    answer is what showed it.)"""
    import s3fs
    from botocore.exceptions import ReadTimeoutError

    from localvault.sync import bucket as bucket_module
    from localvault.sync.open_uploads import OpenUploads

    monkeypatch.setattr(bucket_module, "SINGLE_PUT_BYTES", 0)
    lost: list[str] = []
    call_s3 = s3fs.S3FileSystem.call_s3

    def losing_one_answer(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        answer = call_s3(self, method, *args, **kwargs)
        if method == "create_multipart_upload" and not lost:
            lost.append(answer["UploadId"])
            raise ReadTimeoutError(endpoint_url="http://127.0.0.1/lost")
        return answer

    monkeypatch.setattr(s3fs.S3FileSystem, "call_s3", losing_one_answer)
    _fill(vault, tmp_path, 2)

    report = vault.sync(remote)

    assert report.files_uploaded == 2 and len(lost) == 1
    assert _s3_client(s3_bucket).list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    assert OpenUploads(vault.db).left() == []


def test_an_upload_botocore_created_twice_is_not_left_open(
        vault: Vault, remote: Remote, s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore asks again for a creation whose answer was lost, inside the one call: the store made two uploads,
    the second's id came back, and the first was left open with no note naming it. (The lost answer is injected
    below botocore, where a dropped connection loses it.)"""
    import aiobotocore.endpoint
    from botocore.exceptions import ReadTimeoutError

    from localvault.sync import bucket as bucket_module
    from localvault.sync.open_uploads import OpenUploads

    monkeypatch.setattr(bucket_module, "SINGLE_PUT_BYTES", 0)
    lost: list[str] = []
    send = aiobotocore.endpoint.AioEndpoint._send

    async def losing_one_answer(self: Any, request: Any) -> Any:
        answer = await send(self, request)
        if request.method == "POST" and "uploads" in request.url and "uploadId" not in request.url and not lost:
            lost.append(request.url)
            raise ReadTimeoutError(endpoint_url=request.url)
        return answer

    monkeypatch.setattr(aiobotocore.endpoint.AioEndpoint, "_send", losing_one_answer)
    _fill(vault, tmp_path, 1)

    assert vault.sync(remote).files_uploaded == 1 and len(lost) == 1
    assert _s3_client(s3_bucket).list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    assert OpenUploads(vault.db).left() == []


def test_an_offline_error_keeps_its_cause_and_says_what_to_do(vault: Vault) -> None:
    """The advice is added to the error itself: its type, its cause (the driver's error) and traceback stay."""
    with pytest.raises(OfflineError) as raised:
        vault.sync(Remote("postgresql://nobody:pw@127.0.0.1:1/none", "memory://never"))
    assert "nothing was lost: sync again once it can be reached" in str(raised.value)
    assert raised.value.__cause__ is not None


@pytest.mark.parametrize(("change", "kind", "needle"), [
    # (a sync user's journey: these said "offline ... sync again once it can be reached", exit 10)
    (lambda dsn: dsn + ("&" if "?" in dsn else "?") + "sslmode=require", SyncError,
     "remove sslmode=require (or verify-…) from the database URL, or turn SSL on at the server"),
    (lambda dsn: re.sub(r":[^:@/]*@", "@", dsn, count=1), SyncError, "in $PGPASSWORD or ~/.pgpass"),
    (lambda dsn: re.sub(r"@[^:/]+:", "@no-such-host.invalid:", dsn, count=1), OfflineError,
     "offline, or is the host name right?"),
])
def test_a_database_url_no_retry_can_fix_says_what_to_change(server: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, change: Any,
                                                              kind: type[Exception], needle: str) -> None:
    from localvault.sync import connection

    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    dsn = change(server)
    assert dsn != server
    with pytest.raises(kind) as caught:
        connection.connect(dsn)
    assert needle in str(caught.value), caught.value
    assert type(caught.value) is kind


def test_a_big_files_upload_moves_the_bar_part_by_part(vault: Vault, remote: Remote, s3_bucket: Any,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar stood at 0 bytes until a whole file was sent (a sync user's journey: a 1 GiB video on a slow
    uplink looked frozen for minutes). It now moves as each part is taken, and adds up to the file's size."""
    from localvault.sync import bucket as bucket_module
    from localvault.sync import multipart

    monkeypatch.setattr(bucket_module, "SINGLE_PUT_BYTES", 0)
    big = tmp_path / "big.png"
    # Two whole parts and a last one (a store takes no part under 5 MiB but the last).
    Image.frombytes("RGB", (2560, 2304), os.urandom(2560 * 2304 * 3)).save(big, compress_level=0)
    size, part = big.stat().st_size, multipart.STREAM_BLOCK
    assert 2 * part < size < 3 * part
    vault.library.add(big, prompt="big")
    events: list[ProgressEvent] = []
    vault.sync(remote, progress=events.append)
    uploads = [e for e in events if e.stage == "upload" and (e.advance or e.bytes_advance)]
    assert sum(e.bytes_advance for e in uploads) == size
    before_done = [e.bytes_advance for e in uploads if e.advance == 0]
    assert before_done[:2] == [part, part], before_done
    assert uploads[-1].advance == 1 and uploads[-1].bytes_advance < part
    assert_mirrors(vault, remote, s3_bucket)


def test_parts_told_of_again_after_an_upload_gone_are_counted_once(vault: Vault, remote: Remote, s3_bucket: Any,
                                                                   tmp_path: Path, fast_retries: None) -> None:
    """A review's find: an upload tried again (its multipart upload aborted meanwhile: sent anew) told the bar of
    its first parts again, which filled it before the last part was sent."""
    from servers import s3_error_xml

    from localvault.sync import multipart

    big = tmp_path / "big.png"
    Image.frombytes("RGB", (2560, 2304), os.urandom(2560 * 2304 * 3)).save(big, compress_level=0)
    size, part = big.stat().st_size, multipart.STREAM_BLOCK
    assert 2 * part < size < 3 * part
    vault.library.add(big, prompt="big")
    timeline: list[tuple[str, int]] = []
    third_part_puts = 0

    def gone_once(method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        nonlocal third_part_puts
        if method == "PUT" and "partNumber=3" in path:
            third_part_puts += 1
            if third_part_puts == 1:
                return 404, s3_error_xml("NoSuchUpload", "The specified upload does not exist.")
            timeline.append(("third part sent again", 0))
        return None

    def progress(event: ProgressEvent) -> None:
        if event.stage == "upload" and event.bytes_advance:
            timeline.append(("bytes", event.bytes_advance))

    with through_proxy(remote, s3_bucket, gone_once) as proxied:
        assert vault.sync(proxied, progress=progress).files_uploaded == 1
    mark = timeline.index(("third part sent again", 0))
    assert sum(n for what, n in timeline[:mark] if what == "bytes") == 2 * part, timeline
    assert sum(n for what, n in timeline if what == "bytes") == size
    assert_mirrors(vault, remote, s3_bucket)
