"""Pytest plugin: a real PostgreSQL server and a real S3-protocol server.

Loaded by ``pytest_plugins = ["servers"]`` in ``tests/conftest.py``.

Fixtures
--------
``postgres_server`` (session)
    A private PostgreSQL cluster on 127.0.0.1 (initdb in a temporary folder,
    fsync off). Yields a :class:`PostgresServer`: ``host``, ``port``, ``user``,
    ``password``, ``dsn(dbname)``, ``stop()``, ``start()``, ``is_running()``.
``pg_template`` (session)
    Name of a database with the compat layer and every localvault migration
    applied through :func:`localvault.sync.schema.apply_schema`.
``pg_database`` (function)
    DSN (``postgresql://…``) of a fresh database cloned from ``pg_template``;
    dropped afterwards.
``pg_empty_database`` (function)
    DSN of a fresh, empty database (nothing applied); dropped afterwards.
``s3_server`` (session)
    Endpoint URL (``http://127.0.0.1:<port>``) of a moto S3 server.
``s3_bucket`` (function)
    ``S3Bucket(name, storage_options)``, a tuple: a fresh bucket and the s3fs
    storage options to reach it. AWS_* variables are set for the test only.

Helper
------
:func:`s3_proxy` puts an HTTP proxy in front of the S3 server that answers
chosen requests itself, as a real store does where moto cannot be made to
(a per-key error in a DeleteObjects answer, a 413 for one PUT).
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import psycopg
import pytest
from psycopg import sql

PG_USER = "localvault"
PG_PASSWORD = "localvault-test"
S3_KEY = "testing"
S3_SECRET = "testing"
S3_REGION = "us-east-1"


_PORTS_PER_WORKER = 1000
#: Blocks from port 20000 up to below the kernel's outgoing range (32768): twelve workers each have their own.
_BLOCKS = 12
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and never the same one twice in a process.

    The kernel's ``bind(0)`` draws from the range its outgoing connections use, which every xdist worker shares:
    two workers could be handed the same port between one's check and its server's start. Each worker looks
    in its own block below that range instead, and a port once handed out (the PostgreSQL of a test that stopped
    it for a while) is not handed out again."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = 20000 + (int(worker) % _BLOCKS if worker.isdigit() else 0) * _PORTS_PER_WORKER
    start = random.randrange(_PORTS_PER_WORKER)
    for step in range(_PORTS_PER_WORKER):
        port = first + (start + step) % _PORTS_PER_WORKER
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    pytest.fail(f"no free TCP port in {first}..{first + _PORTS_PER_WORKER - 1}", pytrace=False)


def find_pg_bindir() -> Path:
    """Locate initdb/pg_ctl: ``pg_config --bindir``, else the newest /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))

    def major(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return -1.0

    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        candidates.append(Path(found))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL "
        "(e.g. apt-get install postgresql) or put its bin folder on PATH",
        pytrace=False,
    )


class PostgresServer:
    """A throw-away PostgreSQL cluster, started and stopped with pg_ctl."""

    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir = bindir
        self.root = root
        self.datadir = root / "data"
        self.socket_dir = root / "sock"
        self.logfile = root / "postgres.log"
        self.host = "127.0.0.1"
        self.port = port
        self.user = PG_USER
        self.password = PG_PASSWORD
        self._as_postgres = os.geteuid() == 0
        self._os_user = "postgres" if self._as_postgres else pwd.getpwuid(os.geteuid()).pw_name

    # ------------------------------------------------------------ helpers
    def _cmd(self, *args: str) -> list[str]:
        if self._as_postgres:
            return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *args]
        return list(args)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def dsn(self, dbname: str = "postgres") -> str:
        """Connection URL for ``dbname`` as the test superuser."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A psycopg connection (autocommit by default) as the test superuser."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 5)
        return psycopg.connect(self.dsn(dbname), **kwargs)

    # ---------------------------------------------------------- lifecycle
    def init(self) -> None:
        """initdb, write the configuration, start, and create the test superuser."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self._as_postgres:
            for path in (self.root, self.socket_dir):
                shutil.chown(path, "postgres", "postgres")
        result = self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.datadir),
            "-U", self._os_user,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
        )
        if result.returncode != 0:
            pytest.fail(f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}", pytrace=False)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            # fsync off keeps tests fast; synchronous_commit stays on, so a
            # commit reaches the OS before it returns and survives the
            # immediate stops of the fault tests.
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "shared_buffers": "'64MB'",
            "log_min_messages": "warning",
            "password_encryption": "'scram-sha-256'",
        }
        conf = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as fh:
            fh.write("\n# localvault tests\n" + conf)
        self.start()
        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=self._os_user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(self.password)
                )
            )

    def is_running(self) -> bool:
        """Whether the postmaster is up (pg_ctl status)."""
        return self._run(str(self.bindir / "pg_ctl"), "status", "-D", str(self.datadir), timeout=30).returncode == 0

    def start(self) -> None:
        """Start the server and wait until it accepts TCP connections."""
        result = self._run(
            str(self.bindir / "pg_ctl"), "start", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60"
        )
        if result.returncode != 0:
            pytest.fail(
                f"PostgreSQL failed to start on 127.0.0.1:{self.port}:\n{result.stdout}{result.stderr}\n"
                f"--- server log ---\n{self._log_tail()}",
                pytrace=False,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"PostgreSQL is not listening on 127.0.0.1:{self.port}\n{self._log_tail()}", pytrace=False)
                time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate) and wait."""
        self._run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60")

    def ensure_running(self) -> None:
        """Start the server if a test left it stopped."""
        if not self.is_running():
            self.start()

    def destroy(self) -> None:
        """Stop immediately and remove the cluster's folder."""
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __repr__(self) -> str:
        return f"PostgresServer(host={self.host!r}, port={self.port}, user={self.user!r})"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the whole session (fails, never skips, without binaries)."""
    bindir = find_pg_bindir()
    root = Path(tempfile.mkdtemp(prefix="localvault-pg-"))
    server = PostgresServer(bindir, root, free_port())
    try:
        server.init()
    except BaseException:
        server.destroy()
        raise
    try:
        yield server
    finally:
        server.destroy()


def _create_database(server: PostgresServer, name: str, template: str | None = None) -> None:
    server.ensure_running()
    with server.connect() as conn:
        if template is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        else:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
            )


def _drop_database(server: PostgresServer, name: str) -> None:
    server.ensure_running()
    with server.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_template(postgres_server: PostgresServer) -> Iterator[str]:
    """Name of a database holding the full localvault server schema (compat + migrations)."""
    from localvault.sync.schema import apply_schema

    name = f"localvault_template_{uuid.uuid4().hex[:8]}"
    _create_database(postgres_server, name)
    apply_schema(postgres_server.dsn(name))
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            _drop_database(postgres_server, name)


@pytest.fixture
def pg_database(postgres_server: PostgresServer, pg_template: str) -> Iterator[str]:
    """DSN of a fresh database cloned from the schema template; dropped after the test."""
    name = f"lv_test_{uuid.uuid4().hex[:12]}"
    _create_database(postgres_server, name, template=pg_template)
    try:
        yield postgres_server.dsn(name)
    finally:
        _drop_database(postgres_server, name)


@pytest.fixture
def pg_empty_database(postgres_server: PostgresServer) -> Iterator[str]:
    """DSN of a fresh database with nothing applied; dropped after the test."""
    name = f"lv_empty_{uuid.uuid4().hex[:12]}"
    _create_database(postgres_server, name)
    try:
        yield postgres_server.dsn(name)
    finally:
        _drop_database(postgres_server, name)


# --------------------------------------------------------------------- S3


class S3Bucket(NamedTuple):
    """A fresh bucket on the moto server and the s3fs options to reach it."""

    name: str
    storage_options: dict[str, Any]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server running for the whole session."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.fail(f"moto[server] is not installed: {exc}", pytrace=False)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                pytest.fail(f"moto S3 server did not start on {endpoint}", pytrace=False)
            time.sleep(0.05)
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> Iterator[S3Bucket]:
    """A fresh, uniquely named bucket; AWS_* variables point at moto during the test."""
    import boto3

    name = f"lv-test-{uuid.uuid4().hex[:16]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        mp.setenv("AWS_DEFAULT_REGION", S3_REGION)
        mp.setenv("AWS_REGION", S3_REGION)
        for var in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        client = boto3.client(
            "s3",
            endpoint_url=s3_server,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name=S3_REGION,
        )
        client.create_bucket(Bucket=name)
        options: dict[str, Any] = {
            "key": S3_KEY,
            "secret": S3_SECRET,
            "client_kwargs": {"endpoint_url": s3_server, "region_name": S3_REGION},
            "use_listings_cache": False,
        }
        try:
            yield S3Bucket(name, options)
        finally:
            with contextlib.suppress(Exception):
                paginator = client.get_paginator("list_objects_v2")
                for page in paginator.paginate(Bucket=name):
                    keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                    if keys:
                        client.delete_objects(Bucket=name, Delete={"Objects": keys})
                client.delete_bucket(Bucket=name)


#: answer(method, path with query, body) -> (HTTP status, XML body) to answer a request, or None to pass it on.
ProxyAnswer = Callable[[str, str, bytes], "tuple[int, bytes] | None"]


def s3_error_xml(code: str, message: str) -> bytes:
    """An S3 error document, as a store sends with a 4xx or 5xx."""
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            "<RequestId>test</RequestId></Error>").encode()


@contextlib.contextmanager
def s3_proxy(upstream: str, answer: ProxyAnswer) -> Iterator[str]:
    """Endpoint URL of an HTTP proxy in front of ``upstream`` that lets ``answer`` reply to some requests."""
    target = urlparse(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            verdict = answer(self.command, self.path, body)
            if verdict is not None:
                status, data = verdict
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
            else:
                conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                reply = conn.getresponse()
                status, data = reply.status, reply.read()
                conn.close()
                self.send_response(status)
                for name, value in reply.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(name, value)
                if self.command == "HEAD":  # (the object's size, though no body follows)
                    data = b""
                    self.send_header("Content-Length", reply.getheader("Content-Length") or "0")
                    self.end_headers()
                    return
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
