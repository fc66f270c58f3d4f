"""Helpers shared by the bench scripts: timing, percentiles, peak RSS, output.

Bench scripts print; library code never does.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence

__all__ = [
    "percentile",
    "time_runs",
    "summary",
    "peak_rss_mb",
    "print_rss",
    "machine_line",
    "verdict",
    "Stopwatch",
    "TreeRss",
]


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples``, linear interpolation between ranks."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def time_runs(fn: Callable[[], object], runs: int, warmup: int = 5) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times; each call's seconds (perf_counter)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    clock = time.perf_counter
    for _ in range(runs):
        start = clock()
        fn()
        samples.append(clock() - start)
    return samples


def summary(samples: Sequence[float]) -> str:
    """``p50 … ms  p99 … ms  max … ms  (n=…)`` for a list of seconds."""
    return (
        f"p50 {percentile(samples, 50) * 1000:8.3f} ms  p99 {percentile(samples, 99) * 1000:8.3f} ms  "
        f"max {max(samples) * 1000:8.3f} ms  (n={len(samples)})"
    )


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def print_rss(limit_mb: float = 200.0) -> None:
    """Print the peak RSS line with its verdict against ``limit_mb``."""
    peak = peak_rss_mb()
    verdict = "OK" if peak <= limit_mb else "OVER"
    print(f"peak RSS: {peak:.1f} MiB (target <= {limit_mb:.0f} MiB) {verdict}")


class TreeRss:
    """Samples, while in its ``with`` block, the RSS of this process plus its child processes (Linux).

    ``peak_mb``: the largest sum seen. ru_maxrss cannot give this: it is per
    process, and the import's worker processes are processes of their own.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = False
        self._thread: object = None

    @staticmethod
    def _rss_mb(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
        except (OSError, ValueError, IndexError):
            return 0.0

    def _children(self) -> list[int]:
        pid = os.getpid()
        children: list[int] = []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as listing:
                    children += [int(c) for c in listing.read().split()]
        except OSError:
            pass
        return children

    def _sample(self) -> None:
        while not self._stop:
            total = self._rss_mb(os.getpid()) + sum(self._rss_mb(c) for c in self._children())
            self.peak_mb = max(self.peak_mb, total)
            time.sleep(self.interval)

    def __enter__(self) -> TreeRss:
        import threading

        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()  # type: ignore[attr-defined]


def machine_line() -> str:
    """One line describing where the figures were taken."""
    return (
        f"date {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"SQLite {sqlite3.sqlite_version}"
    )


def verdict(value: float, target: float) -> str:
    """``OK`` when ``value <= target``, else ``MISSED``."""
    return "OK" if value <= target else "MISSED"


class Stopwatch:
    """Accumulates the seconds spent inside ``with watch:`` blocks."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.total += time.perf_counter() - self._start

