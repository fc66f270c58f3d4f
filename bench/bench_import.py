"""Import throughput against the baseline "cp -r, then hashlib sha256 in one process", same disk, same run.

    python bench/bench_import.py                         # 10,000 PNGs of ~100 KB
    python bench/bench_import.py --files 10000 --size 10 # the 10 KB case (target >= 2,000 assets/s)
    python bench/bench_import.py --files 500 --size 20   # quick

Each PNG carries an A1111 ``parameters`` text chunk. The page cache cannot be
dropped here, so both runs start in the same state: after one warm read of
every source file. The target is ours >= 0.8 x the baseline's throughput.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TreeRss, machine_line, print_rss

from localvault import Vault


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def make_png(index: int, size_kb: int) -> bytes:
    """A valid PNG of ~``size_kb`` KB (random, incompressible pixels) with an A1111 parameters chunk."""
    side = max(8, int((size_kb * 1024 / 3) ** 0.5))
    raw = os.urandom(side * side * 3)
    rows = b"".join(b"\x00" + raw[y * side * 3:(y + 1) * side * 3] for y in range(side))
    params = (f"a lighthouse at dusk, oil painting, batch {index // 4}\nNegative prompt: blurry\n"
              f"Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: {1000 + index}, Size: {side}x{side}, "
              f"Model hash: abc123, Model: sdxl_base")
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", side.to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00")
            + _chunk(b"tEXt", b"parameters\x00" + params.encode("latin-1"))
            + _chunk(b"IDAT", zlib.compress(rows, 0)) + _chunk(b"IEND", b""))


def warm_read(folder: Path) -> None:
    for entry in os.scandir(folder):
        with open(entry.path, "rb") as handle:
            while handle.read(1 << 20):
                pass


def baseline(src: Path, dest: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dest)], check=True)
    for entry in os.scandir(dest):
        with open(entry.path, "rb") as handle:
            digest = hashlib.sha256()
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=100, help="approximate file size in KB")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each side's best is compared")
    parser.add_argument("--dir", default=None, help="work folder (default: a temp folder on the vault's disk)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lv-bench-import-", dir=args.dir))
    try:
        src = work / "src"
        src.mkdir()
        total_bytes = 0
        for i in range(args.files):
            data = make_png(i, args.size)
            (src / f"{i:06d}.png").write_bytes(data)
            total_bytes += len(data)
        os.sync()
        print(machine_line())
        print(f"{args.files} PNGs, {total_bytes / args.files / 1024:.1f} KB each, {total_bytes / 1e6:.1f} MB in all")

        # Nothing is deleted until the end: ext4 will not reuse an inode freed in the last minute or
        # so and scans past each one on every create (recently_deleted() in the kernel's profile), so a
        # run right after a deletion of 10,000 files is slowed for reasons that are not its own.
        # The two contenders alternate and each one's best round is compared.
        bases: list[float] = []
        durables: list[float] = []  # the baseline plus the sync that makes its copies durable, as ours are
        ourses: list[float] = []
        tree_peaks: list[float] = []  # the import with its worker processes, sampled
        for round_number in range(1, args.rounds + 1):
            warm_read(src)
            bases.append(baseline(src, work / f"copy{round_number}"))
            began = time.perf_counter()
            os.sync()
            durables.append(bases[-1] + time.perf_counter() - began)

            warm_read(src)
            vault = Vault.create(work / f"vault{round_number}")
            started = time.perf_counter()
            with TreeRss() as tree:
                result = vault.workspace.import_folder(src, workers=args.workers)
            ourses.append(time.perf_counter() - started)
            tree_peaks.append(tree.peak_mb)
            vault.close()
            assert len(result.imported) == args.files, result.summary()
            os.sync()
            print(f"round {round_number}: baseline {bases[-1]:.2f} s (with sync {durables[-1]:.2f} s), "
                  f"localvault {ourses[-1]:.2f} s", flush=True)
        base, ours = min(bases), min(ourses)

        ratio = base / ours
        print(f"best of {args.rounds} rounds each:")
        print(f"baseline cp -r + hashlib sha256: {base:7.2f} s  {args.files / base:8.0f} files/s  "
              f"{total_bytes / base / 1e6:7.1f} MB/s")
        print(f"localvault import (copy):        {ours:7.2f} s  {args.files / ours:8.0f} files/s  "
              f"{total_bytes / ours / 1e6:7.1f} MB/s")
        print(f"throughput ratio ours/baseline: {ratio:.2f} (target >= 0.80) {'OK' if ratio >= 0.8 else 'MISSED'}")
        # Not the target, context for it: the import makes every file durable before its row commits
        # (syncfs), which the baseline never does; here is the baseline paying for the same durability.
        durable = min(durables)
        print(f"for context, the baseline made durable (cp -r + sha256 + sync): {durable:.2f} s; "
              f"ratio ours/that: {durable / ours:.2f}")
        if args.size <= 10:
            rate = args.files / ours
            print(f"assets/s: {rate:.0f} (target >= 2000 for 10 KB files) {'OK' if rate >= 2000 else 'MISSED'}")
        print_rss()
        tree_peak = max(tree_peaks)
        print(f"peak RSS of the import with its worker processes (sampled every 20 ms, summed): {tree_peak:.1f} MiB "
              f"(target <= 200 MiB) {'OK' if tree_peak <= 200 else 'OVER'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
