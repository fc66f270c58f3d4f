"""Expiry at scale: ``vault.cleanup()`` of many expired workspace assets, with a reader running.

Makes a vault holding ``--assets`` expired workspace assets (default 100,000),
each with a real ~200-byte PNG at its place in ``workspace-temp/`` (files
written straight to disk, rows inserted straight into ``workspace_assets`` in
batches), plus a few unexpired assets and library rows that must survive.
Then times ``vault.cleanup()`` while a reader thread with its own connection
(``Vault.open(readonly=True)``) runs ``library.list``, ``workspace.list`` and
``workspace.count`` in a loop and records every query's latency. Afterwards it
checks that every expired row and file is gone and the rest are untouched.

Run ``python bench/bench_cleanup.py`` (full size) or ``--assets 5000`` to try.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import struct
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line, percentile, print_rss, summary, verdict

from localvault import Vault
from localvault.files import WORKSPACE_BUCKET
from localvault.timestamps import format_time

USER = "cccccccc-0000-4000-8000-00000000000c"
ASSETS_PER_JOB = 4
BATCH = 10_000
KEPT_WORKSPACE = 200
LIBRARY_ROWS = 1_000
CLEANUP_TARGET_S = 30.0
BLOCK_TARGET_MS = 100.0

WORKSPACE_SQL = (
    "INSERT INTO workspace_assets (id, user_id, asset_type, temp_storage_path, file_size_bytes, mime_type,"
    " duration_seconds, job_id, asset_index, generation_seed, original_prompt, model_used, generation_settings,"
    " created_at, expires_at, thumbnail_path, width, height, sha256) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
LIBRARY_SQL = (
    "INSERT INTO user_library (id, user_id, asset_type, storage_path, file_size_bytes, mime_type, original_prompt,"
    " model_used, generation_seed, tags, sha256, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def tiny_png(index: int, size: int = 200) -> bytes:
    """A valid 1x1 PNG of about ``size`` bytes whose bytes are unique to ``index`` (a tEXt chunk)."""
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    pixels = _chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + _chunk(b"IEND", b"")
    text = f"Comment\x00bench asset {index} ".encode()
    filler = max(0, size - len(head) - len(pixels) - len(text) - 12)
    return head + _chunk(b"tEXt", text + b"." * filler) + pixels


def workspace_rows(count: int, expired: bool, start: int) -> Iterator[tuple[tuple[Any, ...], bytes]]:
    """(row, file bytes) for ``count`` assets; expired ones have ``expires_at`` in the past."""
    now = datetime.now(timezone.utc)
    base = now - timedelta(days=10) if expired else now - timedelta(hours=1)
    job = ""
    for n in range(count):
        i = start + n
        if n % ASSETS_PER_JOB == 0:
            job = str(uuid.uuid4())
        index = n % ASSETS_PER_JOB
        data = tiny_png(i)
        created = base + timedelta(milliseconds=n)
        expires = created + timedelta(days=7)
        if expired:
            expires = min(expires, now - timedelta(seconds=1))
        yield (
            (str(uuid.uuid4()), USER, "image", f"{USER}/{job}/{index}.png", len(data), "image/png", None, job, index,
             i, f"bench prompt {i}", "sdxl-1.0", "{}", format_time(created), format_time(expires), None, 1, 1,
             hashlib.sha256(data).hexdigest()),
            data,
        )


def populate(vault: Vault, expired: int) -> None:
    """Files on disk and rows in batches: ``expired`` expired assets, a few live ones, some library rows."""
    root = Path(vault.files.full_path(WORKSPACE_BUCKET, ""))
    started = time.perf_counter()
    for count, is_expired, start in ((expired, True, 0), (KEPT_WORKSPACE, False, expired)):
        batch: list[tuple[Any, ...]] = []
        for row, data in workspace_rows(count, is_expired, start):
            path = root / row[3]
            if row[8] == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            batch.append(row)
            if len(batch) >= BATCH:
                with vault.db.write() as conn:
                    conn.executemany(WORKSPACE_SQL, batch)
                batch = []
        if batch:
            with vault.db.write() as conn:
                conn.executemany(WORKSPACE_SQL, batch)
    stamp = datetime.now(timezone.utc) - timedelta(days=30)
    library = [
        (asset_id := str(uuid.uuid4()), USER, "image", f"{USER}/{asset_id}.png", 1_000, "image/png", f"kept {i}",
         "sdxl-1.0", i, json.dumps(["kept"]), hashlib.sha256(f"library {i}".encode()).hexdigest(),
         format_time(stamp + timedelta(seconds=i)), format_time(stamp + timedelta(seconds=i)))
        for i in range(LIBRARY_ROWS)
    ]
    with vault.db.write() as conn:
        conn.executemany(LIBRARY_SQL, library)
    print(f"setup: {expired:,} expired + {KEPT_WORKSPACE} live workspace assets with files "
          f"({ASSETS_PER_JOB} per job folder), {LIBRARY_ROWS:,} library rows, in {time.perf_counter() - started:.1f} s")


class Reader:
    """Queries the vault in a loop from its OWN PROCESS (like another app would), on a read-only
    connection, recording each query's latency; a thread would share our GIL and measure that instead."""

    def __init__(self, root: Path, pause: float) -> None:
        context = multiprocessing.get_context("fork")
        self.stop = context.Event()
        self._results = context.Queue()
        self._process = context.Process(target=_read_loop, args=(root, pause, self.stop, self._results), daemon=True)
        self.latencies: dict[str, list[float]] = {}
        self.error: str | None = None

    def start(self) -> None:
        self._process.start()

    def join(self) -> None:
        self.latencies, self.error = self._results.get(timeout=60)
        self._process.join()

    def all(self) -> list[float]:
        return [s for samples in self.latencies.values() for s in samples]


def _read_loop(root: Path, pause: float, stop: Any, results: Any) -> None:
    latencies: dict[str, list[float]] = {"library.list": [], "workspace.list": [], "workspace.count": []}
    error = None
    try:
        vault = Vault.open(root, user_id=USER, readonly=True)
        calls = (
            ("library.list", lambda: vault.library.list(limit=50)),
            ("workspace.list", lambda: vault.workspace.list(limit=50)),
            ("workspace.count", vault.workspace.count),
        )
        clock = time.perf_counter
        while not stop.is_set():
            for name, call in calls:
                start = clock()
                call()
                latencies[name].append(clock() - start)
                time.sleep(pause)
        vault.close()
    except BaseException as exc:  # reported by the main process
        error = repr(exc)
    results.put((latencies, error))


def _count_files(folder: Path) -> int:
    return sum(len(names) for _dir, _dirs, names in os.walk(folder))


def run(root: Path, assets: int, pause: float) -> bool:
    vault = Vault.create(root, user_id=USER)
    populate(vault, assets)
    workspace_dir = Path(vault.files.full_path(WORKSPACE_BUCKET, ""))
    files_before = _count_files(workspace_dir)

    idle = Reader(root, pause)
    idle.start()
    time.sleep(2.0)
    idle.stop.set()
    idle.join()
    if idle.error:
        raise RuntimeError(idle.error)

    reader = Reader(root, pause)
    reader.start()
    time.sleep(0.5)
    started = time.perf_counter()
    result = vault.cleanup()
    elapsed = time.perf_counter() - started
    time.sleep(0.2)
    reader.stop.set()
    reader.join()
    if reader.error:
        raise RuntimeError(reader.error)

    conn = vault.db.conn
    now = format_time(datetime.now(timezone.utc))
    expired_left = conn.execute("SELECT count(*) FROM workspace_assets WHERE expires_at <= ?", (now,)).fetchone()[0]
    live_left = conn.execute("SELECT count(*) FROM workspace_assets").fetchone()[0]
    library_left = conn.execute("SELECT count(*) FROM user_library").fetchone()[0]
    pending_left = conn.execute("SELECT count(*) FROM pending_deletes").fetchone()[0]
    files_after = _count_files(workspace_dir)
    folders_after = sum(1 for _ in workspace_dir.rglob("*") if _.is_dir())
    vault.close()

    print(f"cleanup: vault.cleanup() removed {result.assets_removed:,} assets and {result.files_removed:,} files "
          f"in {elapsed:.2f} s ({result.assets_removed / elapsed:,.0f} assets/s); "
          f"target <= {CLEANUP_TARGET_S:g} s {verdict(elapsed, CLEANUP_TARGET_S)}")
    ok = (result.assets_removed == assets and expired_left == 0 and live_left == KEPT_WORKSPACE
          and library_left == LIBRARY_ROWS and pending_left == 0 and files_after == KEPT_WORKSPACE
          and files_before == assets + KEPT_WORKSPACE)
    print(f"  afterwards: expired rows left {expired_left}, files left {files_after:,} of {files_before:,} "
          f"(the {KEPT_WORKSPACE} live ones), live rows {live_left}, library rows {library_left:,}, "
          f"pending_deletes {pending_left}, folders left {folders_after:,}: {'OK' if ok else 'WRONG'}")
    print(f"reader (own process and read-only connection, {pause * 1000:g} ms pause between queries), latency per query:")
    for label, thread in (("  idle (before cleanup)", idle), ("  during cleanup", reader)):
        print(f"{label}: {summary(thread.all())}")
    for name, samples in reader.latencies.items():
        print(f"    {name:16s} {summary(samples)}")
    worst = max(reader.all()) * 1000
    p99 = percentile(reader.all(), 99) * 1000
    print(f"  during cleanup: max {worst:.1f} ms, p99 {p99:.1f} ms; target never > {BLOCK_TARGET_MS:g} ms "
          f"{verdict(worst, BLOCK_TARGET_MS)}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=int, default=100_000, help="expired workspace assets to make")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the temporary vault (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the vault folder afterwards")
    parser.add_argument("--pause", type=float, default=0.002, help="reader's pause between queries, seconds")
    args = parser.parse_args(argv)
    print(f"bench_cleanup: {machine_line()}")
    print(f"command: python bench/bench_cleanup.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    scratch = Path(tempfile.mkdtemp(prefix="lv-bench-cleanup-", dir=args.dir))
    try:
        ok = run(scratch / "vault", args.assets, args.pause)
    finally:
        if args.keep:
            print(f"kept {scratch / 'vault'}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print_rss()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
