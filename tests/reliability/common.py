"""Shared helpers of the reliability suite (crash, fault, concurrency, bad input, security).

Imported as ``reliability.common`` (tests/ is on sys.path through conftest.py).
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import psycopg
from PIL import Image

from localvault.sync.statements import COLLECTION_COLUMNS, LIBRARY_COLUMNS
from localvault.timestamps import format_time

USER_A = "0a0a0a0a-0000-4000-8000-00000000000a"
USER_B = "0b0b0b0b-0000-4000-8000-00000000000b"

#: The CLI as a subprocess: the package's own entry point, through this interpreter.
CLI = [sys.executable, "-m", "localvault.cli"]


def tiny_png(n: int, salt: int = 0) -> bytes:
    """A real ~1 KB PNG whose bytes depend on ``n`` and ``salt``."""
    rng = random.Random(n * 1_000_003 + salt)
    image = Image.frombytes("RGB", (16, 16), rng.randbytes(16 * 16 * 3))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def write_pngs(folder: Path, start: int, count: int, salt: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(start, start + count):
        path = folder / f"gen-{salt}-{n:06d}.png"
        path.write_bytes(tiny_png(n, salt))
        paths.append(path)
    return paths


def cli_env(vault_root: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LOCALVAULT_PATH", None)
    if vault_root is not None:
        env["LOCALVAULT_PATH"] = str(vault_root)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["COLUMNS"] = "200"
    return env


def run_cli(vault_root: Path | None, *args: str, timeout: float = 120, check: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=cli_env(vault_root),
                            input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"localvault {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def spawn_cli(vault_root: Path | None, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env(vault_root),
                            start_new_session=True)


def spawn_python(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=cli_env(None), start_new_session=True)


def kill_at(proc: subprocess.Popen[bytes], delay: float) -> bool:
    """SIGKILL ``proc`` (and its group) ``delay`` seconds from now; True if it was still running then."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))
    alive = proc.poll() is None
    if alive:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    if proc.stderr is not None:
        proc.stderr.close()
    return alive


def timed_run(argv_proc: subprocess.Popen[bytes]) -> tuple[int, float, str]:
    started = time.monotonic()
    _, err = argv_proc.communicate(timeout=300)
    return argv_proc.returncode, time.monotonic() - started, err.decode(errors="replace") if err else ""


# --------------------------------------------------------------- server side


def add_users(dsn: str, *users: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for user in users:
            conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                         (user, f"{user[:8]}@example.com"))


def _norm(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_time(value)
    if value is None or isinstance(value, (bool, str, int, list, dict)):
        return value
    if isinstance(value, float):
        return round(value, 6)
    try:
        import decimal

        if isinstance(value, decimal.Decimal):
            return round(float(value), 6)
    except ImportError:  # pragma: no cover
        pass
    return str(value)  # UUID


def local_rows(db_path: Path, user_id: str, table: str) -> dict[str, dict[str, Any]]:
    """Every synced column of the local rows of ``table`` for ``user_id``, normalised."""
    import sqlite3

    columns = LIBRARY_COLUMNS if table == "user_library" else COLLECTION_COLUMNS
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        found = {}
        for row in conn.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE user_id = ?", (user_id,)):
            record = dict(zip(columns, row, strict=True))
            if table == "user_library":
                record["tags"] = json.loads(record["tags"])
                record["generation_settings"] = json.loads(record["generation_settings"])
                record["is_favorite"] = bool(record["is_favorite"])
            found[record["id"]] = {k: _norm(v) for k, v in record.items()}
        return found
    finally:
        conn.close()


def server_rows(dsn: str, user_id: str, table: str) -> dict[str, dict[str, Any]]:
    columns = LIBRARY_COLUMNS if table == "user_library" else COLLECTION_COLUMNS
    with psycopg.connect(dsn) as conn:
        found = {}
        for row in conn.execute(f"SELECT {', '.join(columns)} FROM public.{table} WHERE user_id = %s", (user_id,)):
            record = {k: _norm(v) for k, v in zip(columns, row, strict=True)}
            found[record["id"]] = record
        return found


def s3_client(storage_options: dict[str, Any]) -> Any:
    return boto3.client("s3", endpoint_url=storage_options["client_kwargs"]["endpoint_url"],
                        aws_access_key_id=storage_options["key"], aws_secret_access_key=storage_options["secret"],
                        region_name="us-east-1")


def bucket_objects(storage_options: dict[str, Any], bucket: str) -> list[tuple[str, int]]:
    client = s3_client(storage_options)
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out += [(item["Key"], item["Size"]) for item in page.get("Contents", [])]
    return out


def assert_server_mirrors(db_path: Path, user_id: str, dsn: str, s3_bucket: Any, *, check_sha: bool = True) -> dict[str, int]:
    """Server rows == local rows (every synced column); one object per row, right size and sha256; nothing extra."""
    problems: list[str] = []
    counts: dict[str, int] = {}
    for table in ("user_collections", "user_library"):
        local, remote = local_rows(db_path, user_id, table), server_rows(dsn, user_id, table)
        counts[table] = len(local)
        missing, extra = set(local) - set(remote), set(remote) - set(local)
        if missing:
            problems.append(f"{table}: {len(missing)} rows missing on the server, e.g. {sorted(missing)[:3]}")
        if extra:
            problems.append(f"{table}: {len(extra)} rows on the server deleted locally, e.g. {sorted(extra)[:3]}")
        for row_id in set(local) & set(remote):
            if local[row_id] != remote[row_id]:
                diff = {k: (local[row_id][k], remote[row_id].get(k)) for k in local[row_id] if local[row_id][k] != remote[row_id].get(k)}
                problems.append(f"{table} {row_id} differs (local, server): {diff}")
                if len(problems) > 20:
                    break
    # asset_count is kept by each side's triggers: they must agree.
    import sqlite3

    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    local_counts = dict(conn.execute("SELECT id, asset_count FROM user_collections WHERE user_id = ?", (user_id,)).fetchall())
    real_counts = dict(conn.execute("SELECT collection_id, count(*) FROM user_library WHERE user_id = ? AND collection_id"
                                    " IS NOT NULL GROUP BY collection_id", (user_id,)).fetchall())
    library = {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT storage_path, file_size_bytes, sha256 FROM user_library WHERE user_id = ?", (user_id,))}
    conn.close()
    with psycopg.connect(dsn) as pg:
        remote_counts = {str(r[0]): r[1] for r in pg.execute(
            "SELECT id, asset_count FROM public.user_collections WHERE user_id = %s", (user_id,))}
        duplicates = pg.execute("SELECT count(*) - count(DISTINCT sha256) FROM public.user_library WHERE user_id = %s",
                                (user_id,)).fetchone()[0]
    if local_counts != remote_counts:
        problems.append(f"asset_count differs: local {local_counts} server {remote_counts}")
    if any(local_counts.get(k, 0) != v for k, v in real_counts.items()) or any(
            v != real_counts.get(k, 0) for k, v in local_counts.items()):
        problems.append(f"local asset_count {local_counts} != real {real_counts}")
    if duplicates:
        problems.append(f"{duplicates} duplicated files (same sha256) on the server")
    objects = bucket_objects(s3_bucket.storage_options, s3_bucket.name)
    keys = [k for k, _ in objects]
    if len(keys) != len(set(keys)):
        problems.append("duplicated object keys")
    sizes = dict(objects)
    extra_objects = set(sizes) - set(library)
    missing_objects = set(library) - set(sizes)
    if extra_objects:
        problems.append(f"{len(extra_objects)} objects left for deleted rows, e.g. {sorted(extra_objects)[:3]}")
    if missing_objects:
        problems.append(f"{len(missing_objects)} objects missing, e.g. {sorted(missing_objects)[:3]}")
    wrong_size = [k for k in set(sizes) & set(library) if sizes[k] != library[k][0]]
    if wrong_size:
        problems.append(f"{len(wrong_size)} objects of the wrong size, e.g. {wrong_size[:3]}")
    if check_sha:
        client = s3_client(s3_bucket.storage_options)
        bad_sha = []
        for key in sorted(set(sizes) & set(library)):
            head = client.head_object(Bucket=s3_bucket.name, Key=key)
            if head.get("Metadata", {}).get("sha256") != library[key][1]:
                bad_sha.append(key)
        if bad_sha:
            problems.append(f"{len(bad_sha)} objects with a wrong sha256, e.g. {bad_sha[:3]}")
    assert not problems, "server does not mirror the vault:\n" + "\n".join(problems)
    counts["objects"] = len(sizes)
    return counts


def remote_set_args(dsn: str, s3_bucket: Any) -> list[str]:
    opts = s3_bucket.storage_options
    return ["remote", "set", "--database-url", dsn, "--bucket", f"s3://{s3_bucket.name}",
            "--endpoint-url", opts["client_kwargs"]["endpoint_url"], "--key", opts["key"], "--secret", opts["secret"],
            "--region", opts["client_kwargs"].get("region_name", "us-east-1")]


def now_utc() -> str:
    return format_time(datetime.now(timezone.utc))
