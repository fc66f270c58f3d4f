"""Watch latency: a rig process writes 20 PNGs/s for 60 s; time from each file's close/rename to its row.

    python bench/bench_watch.py                   # 20 files/s for 60 s (1,200 files of ~100 KB)
    python bench/bench_watch.py --seconds 10      # quick

The writer runs in its own process (as a rig does): even files are written to
a temporary name then renamed, odd files written in place and closed; it
records the moment of the close/rename. This process runs the Watcher and a
poller that reads vault.db through its own SQLite connection every 5 ms and
records when each file's row (by sha256) becomes visible. Target: p95 <= 500 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line, percentile, print_rss
from bench_import import make_png

from localvault import Vault
from localvault.watch import Watcher


def writer(folder: str, rate: float, seconds: float, size_kb: int, out: mp.Queue[tuple[str, float, int]]) -> None:
    """Write ``rate`` files per second for ``seconds``; put (sha256, time of close or rename) per file."""
    count = int(rate * seconds)
    payloads = [make_png(100_000 + i, size_kb) for i in range(count)]
    start = time.time() + 0.5
    for i, data in enumerate(payloads):
        delay = start + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        final = os.path.join(folder, f"{i:06d}.png")
        if i % 2 == 0:
            temp = final + ".part"
            with open(temp, "wb") as handle:
                handle.write(data)
            os.rename(temp, final)
        else:
            with open(final, "wb") as handle:
                handle.write(data)
        out.put((hashlib.sha256(data).hexdigest(), time.time(), i % 2))
    out.put(("done", time.time(), 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=20.0, help="files per second")
    parser.add_argument("--size", type=int, default=100, help="approximate file size in KB")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lv-bench-watch-"))
    try:
        folder = work / "out"
        folder.mkdir()
        vault = Vault.create(work / "vault")
        visible: dict[str, float] = {}
        stop = threading.Event()

        def poll() -> None:
            conn = sqlite3.connect(f"{(work / 'vault' / 'vault.db').as_uri()}?mode=ro", uri=True, isolation_level=None)
            last = 0
            while not stop.is_set():
                rows = conn.execute("SELECT rowid, sha256 FROM workspace_assets WHERE rowid > ?", (last,)).fetchall()
                now = time.time()
                for rowid, sha in rows:
                    visible.setdefault(sha, now)
                    last = max(last, rowid)
                time.sleep(0.005)
            conn.close()

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        written: dict[str, float] = {}
        kinds: dict[str, int] = {}
        queue: mp.Queue[tuple[str, float, int]] = mp.Queue()
        with Watcher(vault, folder) as watcher:
            rig = mp.Process(target=writer, args=(str(folder), args.rate, args.seconds, args.size, queue))
            rig.start()
            while True:
                sha, moment, kind = queue.get()
                if sha == "done":
                    break
                written[sha] = moment
                kinds[sha] = kind
            rig.join()
            deadline = time.time() + 10
            while time.time() < deadline and not set(written) <= set(visible):
                time.sleep(0.05)
        stop.set()
        poller.join()
        vault.close()

        latencies = [visible[sha] - t for sha, t in written.items() if sha in visible]
        missing = len(written) - len(latencies)
        print(machine_line())
        print(f"{len(written)} files written at {args.rate:.0f}/s for {args.seconds:.0f} s "
              f"(~{args.size} KB each; half temp+rename, half write+close); {missing} never seen")
        print(f"close/rename -> row visible: p50 {percentile(latencies, 50) * 1000:.0f} ms  "
              f"p95 {percentile(latencies, 95) * 1000:.0f} ms  max {max(latencies) * 1000:.0f} ms "
              f"(target p95 <= 500 ms) {'OK' if percentile(latencies, 95) <= 0.5 and not missing else 'MISSED'}")
        for kind, label in ((0, "temp + rename"), (1, "write + close")):
            part = [visible[s] - t for s, t in written.items() if s in visible and kinds[s] == kind]
            if part:
                print(f"  {label}: p50 {percentile(part, 50) * 1000:.0f} ms  p95 {percentile(part, 95) * 1000:.0f} ms"
                      f"  max {max(part) * 1000:.0f} ms")
        print(f"watcher summary: {watcher.report.summary()}")
        print_rss()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
