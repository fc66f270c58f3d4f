"""`vault.verify()` over a large vault: its time and its peak memory (no target set; for the record).

    python bench/bench_verify.py                    # 300,000 workspace assets, 100 per job folder
    python bench/bench_verify.py --assets 20000     # quick
    python bench/bench_verify.py --library --assets 100000   # library assets: one flat folder of 100,000 files
    python bench/bench_verify.py --hashes           # hashing: 5,000 distinct files of 512 KB, 1 thread vs default

The vault is built directly (rows by SQL, files as hard links of a few 64-byte
files: creating 300,000 inodes would take minutes on a busy disk). Each row
still has its own sha256, so hashing would find every file "mismatched"; the
timed run therefore uses ``check_hashes=False`` and measures what verify keeps
in memory and how fast it pairs rows with files. verify runs in a child
process, so its peak RSS is its own, not the building's.

``--hashes`` builds distinct files of ``--kb`` KB each (real bytes, real
sha256) and times ``vault.verify()`` with hashing twice: files hashed one at a
time (``HASH_THREADS = 1``, the verify of the twenty-first session and
before) and with the default threads. Before each run the kernel's page cache
is dropped where this process may (root on Linux), so both read a cold disk;
the line says which.
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
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import machine_line, peak_rss_mb

from localvault import Vault
from localvault.files import LIBRARY_BUCKET, WORKSPACE_BUCKET

USER = "aaaaaaaa-0000-4000-8000-00000000000a"
PER_JOB = 100
LINKS_PER_BLOB = 60_000  # ext4 allows 65,000 links per inode
BATCH = 10_000


_WORKSPACE_INSERT = ("INSERT INTO workspace_assets (id, user_id, asset_type, temp_storage_path, file_size_bytes,"
                     " mime_type, job_id, asset_index, generation_seed, original_prompt, model_used, sha256)"
                     " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")
_LIBRARY_INSERT = ("INSERT INTO user_library (id, user_id, asset_type, storage_path, file_size_bytes, mime_type,"
                   " generation_seed, original_prompt, model_used, sha256) VALUES (?,?,?,?,?,?,?,?,?,?)")


def build(root: Path, assets: int, library: bool) -> float:
    from conftest import raw_connection  # tests/conftest.py: a plain sqlite3 connection to the vault

    began = time.perf_counter()
    Vault.create(root, user_id=USER).close()
    conn = raw_connection(root)
    blob = root / "blob.png"
    rows = []
    for i in range(assets):
        if i % LINKS_PER_BLOB == 0:
            blob.unlink(missing_ok=True)
            blob.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 56)
        asset_id, sha = str(uuid.uuid4()), hashlib.sha256(f"asset {i}".encode()).hexdigest()
        if library:  # the library's layout: one folder per user
            relative = f"{USER}/{asset_id}.png"
            path = root / LIBRARY_BUCKET / relative
            rows.append((asset_id, USER, "image", relative, 64, "image/png", 0, f"asset {i}", "unknown", sha))
        else:
            job = str(uuid.UUID(int=i // PER_JOB + 1, version=4))
            relative = f"{USER}/{job}/{i % PER_JOB}.png"
            path = root / WORKSPACE_BUCKET / relative
            rows.append((asset_id, USER, "image", relative, 64, "image/png", job, i % PER_JOB, 0, f"asset {i}",
                         "unknown", sha))
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(blob, path)
        if len(rows) == BATCH or i == assets - 1:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_LIBRARY_INSERT if library else _WORKSPACE_INSERT, rows)
            conn.execute("COMMIT")
            rows.clear()
    blob.unlink(missing_ok=True)
    conn.close()
    return time.perf_counter() - began


def build_distinct(root: Path, assets: int, kb: int) -> float:
    """Library assets whose files are distinct bytes of ``kb`` KB each, with their true sha256."""
    from conftest import raw_connection

    began = time.perf_counter()
    Vault.create(root, user_id=USER).close()
    conn = raw_connection(root)
    folder = root / LIBRARY_BUCKET / USER
    folder.mkdir(parents=True, exist_ok=True)
    filler = os.urandom(kb * 1024)
    rows = []
    for i in range(assets):
        data = b"\x89PNG\r\n\x1a\n" + i.to_bytes(8, "big") + filler[16:]
        asset_id = str(uuid.uuid4())
        (folder / f"{asset_id}.png").write_bytes(data)
        rows.append((asset_id, USER, "image", f"{USER}/{asset_id}.png", len(data), "image/png", 0, f"asset {i}",
                     "unknown", hashlib.sha256(data).hexdigest()))
        if len(rows) == BATCH or i == assets - 1:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_LIBRARY_INSERT, rows)
            conn.execute("COMMIT")
            rows.clear()
    conn.close()
    os.sync()
    return time.perf_counter() - began


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root on Linux), so the next reads come from the disk."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")
        return True
    except OSError:
        return False


def measure(root: Path, threads: int | None) -> None:
    """In the child: open the vault, run verify, print its figures."""
    from localvault import verify as verify_module

    if threads is not None:
        verify_module.HASH_THREADS, verify_module.HASH_WINDOW = threads, 8 * threads
    vault = Vault.open(root)
    before = peak_rss_mb()
    hashing = threads is not None
    cold = drop_page_cache() if hashing else False
    began = time.perf_counter()
    result = vault.verify(check_hashes=hashing)
    seconds = time.perf_counter() - began
    assert result.clean and result.checked > 0, (result.checked, result.missing[:3], result.orphans[:3])
    how = (f"hashing on {verify_module.HASH_THREADS} thread(s), {'cold' if cold else 'warm'} page cache"
           if hashing else "no hashing")
    print(f"verify ({how}): {result.checked:,} assets checked in {seconds:.1f} s "
          f"({result.checked / seconds:,.0f}/s), clean; peak RSS {peak_rss_mb():.1f} MiB "
          f"(opened vault: {before:.1f} MiB)")
    vault.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=int, default=300_000)
    parser.add_argument("--library", action="store_true", help="library assets (one flat folder) instead")
    parser.add_argument("--hashes", action="store_true", help="distinct files, verify with hashing")
    parser.add_argument("--kb", type=int, default=512, help="size of each file with --hashes")
    parser.add_argument("--dir", default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the child's side
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(Path(args.measure), args.threads)
        return
    work = Path(tempfile.mkdtemp(prefix="lv-bench-verify-", dir=args.dir))
    child = [sys.executable, __file__, "--measure", str(work / "vault")]
    try:
        print(machine_line())
        if args.hashes:
            assets = 5_000 if args.assets == parser.get_default("assets") else args.assets
            seconds = build_distinct(work / "vault", assets, args.kb)
            print(f"built {assets:,} library assets of {args.kb} KB (distinct files) in {seconds:.1f} s")
            from localvault.verify import HASH_THREADS

            for threads in (1, HASH_THREADS):
                subprocess.run([*child, "--threads", str(threads)], check=True)
            return
        seconds = build(work / "vault", args.assets, args.library)
        kind = "library" if args.library else "workspace"
        print(f"built {args.assets:,} {kind} assets (rows and hard-linked files) in {seconds:.1f} s")
        subprocess.run(child, check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
