"""Local servers for the sync benchmarks: a private PostgreSQL and a moto S3 server.

PostgreSQL reuses :class:`PostgresServer` of ``tests/servers.py`` (initdb into a
temporary folder, fsync off, a free port on 127.0.0.1; run as the ``postgres``
system user when we are root). moto runs as a *separate process*
(``moto_server -H 127.0.0.1 -p PORT``) so that the benchmark's peak RSS counts
only our side, and so that moto's CPU is not taken from our threads by the GIL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from servers import (  # tests/servers.py
    S3_KEY,
    S3_REGION,
    S3_SECRET,
    PostgresServer,
    find_pg_bindir,
    free_port,
)

__all__ = ["postgres", "moto", "PostgresServer", "S3_KEY", "S3_SECRET", "S3_REGION", "s3_options", "s3_client",
           "create_database", "MOTO_PIDS", "process_cpu"]


@contextlib.contextmanager
def postgres() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL cluster for the duration of the block."""
    root = Path(tempfile.mkdtemp(prefix="localvault-bench-pg-"))
    server = PostgresServer(find_pg_bindir(), root, free_port())
    try:
        server.init()
        yield server
    finally:
        server.destroy()


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not listen on 127.0.0.1:{port}") from None
            time.sleep(0.05)


#: The process of each running moto server, by endpoint (for the CPU it spends: :func:`process_cpu`).
MOTO_PIDS: dict[str, int] = {}


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds a process (all its threads) has used so far; None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def moto() -> Iterator[str]:
    """Endpoint URL of a moto S3 server running in its own process."""
    exe = shutil.which("moto_server")
    command = [exe] if exe else [sys.executable, "-m", "moto.server"]
    port = free_port()
    env = dict(os.environ)
    proc = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_port(port, proc)
        MOTO_PIDS[endpoint] = proc.pid
        yield endpoint
    finally:
        MOTO_PIDS.pop(endpoint, None)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def s3_options(endpoint: str) -> dict[str, Any]:
    """s3fs storage options for the moto server."""
    return {"key": S3_KEY, "secret": S3_SECRET, "use_listings_cache": False,
            "client_kwargs": {"endpoint_url": endpoint, "region_name": S3_REGION}}


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                        region_name=S3_REGION)


def create_database(server: PostgresServer, name: str, *, schema: bool = True, users: tuple[str, ...] = ()) -> str:
    """Create database ``name`` (with the full localvault server schema unless ``schema`` is false); its DSN."""
    from psycopg import sql

    with server.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = server.dsn(name)
    if schema:
        from localvault.sync.schema import apply_schema

        apply_schema(dsn)
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            for user in users:
                conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, %s)", (user, f"{user[:8]}@example.com"))
    return dsn
