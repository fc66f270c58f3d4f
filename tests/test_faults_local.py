"""Local faults: a full disk and a read-only vault folder (real tmpfs mounts).

Each fault must give a clear StorageError (CLI: exit 8 and one line), leave
nothing half-written (no temp file, no orphan, no row without its file, the
database intact), and the next run after the fault is gone must complete.
(PostgreSQL restarts and a stopped S3 server are covered by test_sync_faults.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from reliability.common import USER_A, run_cli, tiny_png

from localvault import StorageError, Vault
from localvault.files import TEMP_PREFIX

SWEEP = [0, 512, 1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536, 98304, 131072, 262144]


def _mount(target: Path, options: str) -> None:
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here ({result.stderr.strip()}); these fault tests need root, as CI has",
                    pytrace=False)


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    _mount(mount_point, "size=8m,mode=0755")  # (room for the WAL to grow to its checkpoint: ~4 MB)
    try:
        yield mount_point
    finally:
        _umount(mount_point)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(disk: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free."""
    filler = disk / "filler.bin"
    filler.unlink(missing_ok=True)
    size = max(0, _free(disk) - leave)
    with open(filler, "wb") as out:
        try:
            out.write(b"\0" * size)  # tmpfs allocates zeros too
        except OSError:
            pass
    return filler


def _consistent(root: Path) -> tuple[int, int]:
    """Rows and files agree one to one, no temp file is left, the database is intact; (rows, files)."""
    conn = sqlite3.connect(root / "vault.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        paths = {("workspace-temp", r[0]) for r in conn.execute("SELECT temp_storage_path FROM workspace_assets")}
        paths |= {("user-library", r[0]) for r in conn.execute("SELECT storage_path FROM user_library")}
        pending = conn.execute("SELECT count(*) FROM pending_deletes").fetchone()[0]
    finally:
        conn.close()
    files = set()
    for bucket in ("workspace-temp", "user-library"):
        for folder, _dirs, names in os.walk(root / bucket):
            for name in names:
                assert not name.startswith(TEMP_PREFIX), f"temp file left: {folder}/{name}"
                files.add((bucket, os.path.relpath(os.path.join(folder, name), root / bucket)))
    assert pending == 0
    assert files == paths, f"rows without files: {paths - files}; files without rows: {files - paths}"
    return len(paths), len(files)


def test_disk_full_sweep_gives_storage_error_and_leaves_nothing_half_written(small_disk: Path, tmp_path: Path) -> None:
    """Every write of the vault, tried with 0 … 256 KB left on the disk: done whole or refused whole."""
    src = tmp_path / "src"
    src.mkdir()
    vault = Vault.create(small_disk / "vault", user_id=USER_A)
    keep = vault.workspace.add(_png(src, 0))
    vault.collections.create("Keep")
    refused = completed = 0
    counter = [1]

    def add_ws() -> None:
        vault.workspace.add(_png(src, counter[0]))

    def add_lib() -> None:
        vault.library.add(_png(src, counter[0]), title="direct", tags=["t"])

    def save() -> None:
        fresh = [a for a in vault.workspace.list(limit=200).items if vault.library.find_sha256(a.sha256) is None]
        if fresh:
            vault.library.save(fresh[0].id, collection="Keep")

    def edit() -> None:
        if vault.library.count():
            asset = vault.library.list(limit=1).items[0]
            vault.library.update(asset.id, title="x" * 200, add_tags=[f"tag{counter[0]}"])

    def collection() -> None:
        vault.collections.create(f"c{counter[0]}", "d" * 1000)

    def delete() -> None:
        items = vault.library.list(limit=1).items
        if items:
            vault.library.delete(items[0].id)

    operations: list[Callable[[], None]] = [add_ws, add_lib, save, edit, collection, delete]
    for leave in SWEEP:
        for operation in operations:
            counter[0] += 1
            filler = _fill(small_disk, leave)
            try:
                operation()
                completed += 1
            except StorageError as exc:
                assert "full" in str(exc) or "space" in str(exc), exc
                refused += 1
            finally:
                filler.unlink()
            _consistent(vault.root)
    vault.close()
    # Space back: the vault opens, verify is clean, and every kind of write completes.
    vault = Vault.open(small_disk / "vault")
    assert vault.verify().clean
    vault.workspace.get(keep.id)
    for operation in operations:
        counter[0] += 1
        operation()
    _consistent(vault.root)
    vault.close()
    print(f"\ndisk-full sweep: {len(SWEEP) * len(operations)} writes with 0–256 KB free: {refused} refused with "
          f"StorageError, {completed} completed whole, 0 half-written")
    assert refused > 0


def _png(folder: Path, n: int) -> Path:
    path = folder / f"p{n}.png"
    path.write_bytes(tiny_png(n, salt=77))
    return path


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_disk_full_through_the_cli_then_next_run_completes(small_disk: Path, tmp_path: Path) -> None:
    root = small_disk / "vault"
    assert run_cli(None, "init", str(root), "--user", USER_A).returncode == 0
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.png"  # ~400 KB of incompressible pixels
    from PIL import Image

    Image.frombytes("RGB", (400, 340), os.urandom(400 * 340 * 3)).save(big, compress_level=0)
    filler = _fill(small_disk, 64 * 1024)
    before = _consistent(root)
    result = run_cli(root, "add", str(big))
    assert result.returncode == 8, result.stdout + result.stderr
    line = _one_error_line(result)
    assert "full" in line and "free some space" in line, line
    assert _consistent(root) == before
    filler.unlink()
    result = run_cli(root, "add", str(big))
    assert result.returncode == 0, result.stderr
    assert _consistent(root) == (before[0] + 1, before[1] + 1)
    assert run_cli(root, "verify").returncode == 0


def test_an_import_onto_a_full_disk_fails_with_one_line_and_the_next_run_takes_the_rest(small_disk: Path,
                                                                                          tmp_path: Path) -> None:
    """Before: exit 0, a "refused" line per file (3,000 of them for a big folder), as if the files were at fault.
    Now: one line for those the vault could not take, the error, exit 8; the same import again takes them."""
    root = small_disk / "vault"
    assert run_cli(None, "init", str(root), "--user", USER_A).returncode == 0
    src = tmp_path / "src"
    src.mkdir()
    for n in range(40):
        _png(src, n)
    (src / "junk.png").write_bytes(b"not a png")  # refused for itself: named on a line of its own
    filler = _fill(small_disk, 64 * 1024)
    result = run_cli(root, "import", str(src), "--no-progress")
    assert result.returncode == 8, result.stdout + result.stderr
    kept_back = [line for line in result.stdout.splitlines() if "could not be written into the vault" in line]
    assert len(kept_back) == 1 and "full" in kept_back[0], result.stdout
    assert [line for line in result.stdout.splitlines() if line.lstrip().startswith("refused")] == [
        f"  refused {src / 'junk.png'}: is not a JPEG, PNG, WebP or MP4 file (its bytes say otherwise)"]
    line = result.stderr.strip().splitlines()[-1]  # (after the log's warning of the batch, which says why)
    assert line.startswith("error: 40 file(s) could not be written into the vault") and "run the same import" \
        " again" in line and "Traceback" not in result.stderr, result.stderr
    as_json = run_cli(root, "import", str(src), "--json")
    report = json.loads(as_json.stdout)  # one object: the report, and the error every --json failure carries
    assert as_json.returncode == 8 and len(report["retryable"]) == 40 - _consistent(root)[0]
    assert report["error"]["exit_code"] == 8 and "run the same import again" in report["error"]["message"]
    filler.unlink()
    again = run_cli(root, "import", str(src), "--no-progress")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _consistent(root)[0] == 40 and run_cli(root, "verify").returncode == 0


def test_read_only_vault_folder_gives_clear_error_and_loses_nothing(small_disk: Path, tmp_path: Path) -> None:
    root = small_disk / "vault"
    src = tmp_path / "src"
    src.mkdir()
    with Vault.create(root, user_id=USER_A) as vault:
        kept = vault.library.add(_png(src, 1), title="kept")
        vault.workspace.add(_png(src, 2))
    before = _consistent(root)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        attempts = {
            "add": run_cli(root, "add", str(_png(src, 3))),
            "collections create": run_cli(root, "collections", "create", "New"),
            "rm": run_cli(root, "rm", kept.id),
            "cleanup": run_cli(root, "cleanup"),
            "verify --repair": run_cli(root, "verify", "--repair"),
        }
        for name, result in attempts.items():
            assert result.returncode == 8, (name, result.stdout, result.stderr)
            line = _one_error_line(result)
            assert "read-only" in line or "permissions" in line, (name, line)
        with pytest.raises(StorageError) as caught:
            Vault.open(root)
        assert "read-only" in str(caught.value) or "permissions" in str(caught.value)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert _consistent(root) == before
    result = run_cli(root, "add", str(_png(src, 3)))
    assert result.returncode == 0, result.stderr
    with Vault.open(root) as vault:
        assert vault.library.get(kept.id).title == "kept"
        assert vault.verify().clean
    assert _consistent(root) == (before[0] + 1, before[1] + 1)


def test_watch_takes_files_refused_by_a_full_disk_once_space_is_freed(small_disk: Path, tmp_path: Path) -> None:
    """Files that could not be written into the vault (the disk full) are tried again, not left to the next
    watch: they are taken once space is freed."""
    from localvault.watch import Watcher, WatchEvent

    root = small_disk / "vault"
    out = tmp_path / "out"
    out.mkdir()
    Vault.create(root, user_id=USER_A).close()
    events: list[WatchEvent] = []
    with Vault.open(root) as vault, Watcher(vault, out, on_event=events.append, poll_seconds=0.05):
        filler = _fill(small_disk, leave=8 * 1024)
        for n in range(4):
            (out / f"while-full-{n}.png").write_bytes(tiny_png(n, salt=7))
            (out / f"big-{n}.png").write_bytes(_big_png(n))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(e.kind == "error" for e in events):
            time.sleep(0.05)
        # To be tried again: an error, not a refusal (the report does not count it refused either)
        assert any(e.kind == "error" and "full" in (e.message or "") and "trying again" in (e.message or "")
                   for e in events), events
        filler.unlink()
        wanted = {f"while-full-{n}.png" for n in range(4)} | {f"big-{n}.png" for n in range(4)}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not wanted <= {Path(e.path).name for e in events if e.kind == "imported"}:
            time.sleep(0.1)
        assert wanted <= {Path(e.path).name for e in events if e.kind == "imported"}
    _consistent(root)


def _big_png(n: int) -> bytes:
    """A ~60 KB PNG (noise does not compress): more than the full disk leaves."""
    import io
    import random

    from PIL import Image

    rng = random.Random(n)
    out = io.BytesIO()
    Image.frombytes("RGB", (150, 150), rng.randbytes(150 * 150 * 3)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def test_repair_moves_an_orphan_off_a_bucket_on_another_disk(small_disk: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """recovered/ is beside the buckets; a bucket folder on another filesystem (a mount, or a link to one) made
    the move fail with EXDEV, which stopped the whole repair. The copy it takes is made before the write lock
    (a big file on a slow disk held other writers past their 60 s)."""
    from localvault import _recovered as files_module

    real_copy = files_module.copy_durably
    lock_free: list[bool] = []

    def copy_while_others_write(source: str, target: str) -> None:
        other = sqlite3.connect(root / "vault.db", isolation_level=None, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            lock_free.append(True)
        except sqlite3.OperationalError:
            lock_free.append(False)
        finally:
            other.close()
        real_copy(source, target)

    monkeypatch.setattr(files_module, "copy_durably", copy_while_others_write)
    root = tmp_path / "v"
    with Vault.create(root, user_id=USER_A) as vault:
        kept = vault.library.add(_png(tmp_path, 1), title="kept")
    library = root / "user-library"
    shutil.copytree(library, small_disk / "user-library")
    shutil.rmtree(library)
    os.symlink(small_disk / "user-library", library)
    orphan = library / USER_A / "0b0b0b0b-0000-4000-8000-00000000000b.png"
    orphan.write_bytes(tiny_png(2))
    os.utime(orphan, (1_700_000_000, 1_700_000_000))
    with Vault.open(root) as vault:
        Path(vault.library.file_path(kept)).unlink()  # and a missing file the same repair must still restore
        vault.workspace.add(_png(tmp_path, 1))  # its twin, on the other disk
        report = vault.verify(repair=True)
        assert report.clean and not orphan.exists()
        assert Path(report.recovered[0]).read_bytes() == tiny_png(2)
        assert Path(report.recovered[0]).stat().st_mtime == 1_700_000_000  # when it was made, as before the move
        assert Path(vault.library.file_path(kept)).is_file() and vault.verify().clean
    assert lock_free == [True]


def test_a_committed_delete_is_not_reported_failed_when_its_file_cannot_be_removed_yet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A delete commits the row's removal, then removes the queued file under the write lock. Another process
    holding that lock made the delete wait the vault's 60 s, then fail (exit 8) though the row was gone. Now it
    waits a few seconds, warns, and the file stays queued for the next drain."""
    import logging

    from localvault import pending

    monkeypatch.setattr(pending, "AFTER_COMMIT_WAIT_MS", 200)
    source = tmp_path / "a.png"
    source.write_bytes(tiny_png(7))
    with Vault.create(tmp_path / "v", user_id=USER_A) as vault:
        kept = vault.library.add(source)
        path = vault.files.local_path("user-library", kept.storage_path)
        real_drain = pending.drain

        def drain_while_another_process_writes(*args: object, **kwargs: object) -> int:
            other = sqlite3.connect(tmp_path / "v" / "vault.db", timeout=0)
            other.execute("BEGIN IMMEDIATE")  # another process's write, under way
            try:
                return real_drain(*args, **kwargs)  # type: ignore[arg-type]
            finally:
                other.rollback()
                other.close()

        monkeypatch.setattr(pending, "drain", drain_while_another_process_writes)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="localvault"):
            vault.library.delete(kept.id)  # no error: the delete is committed
        assert time.monotonic() - started < 10
        assert vault.library.count() == 0 and path is not None and path.exists()
        assert any("tried again later" in r.getMessage() for r in caplog.records)
        monkeypatch.undo()
        vault.housekeeping()
        assert not path.exists()
        assert vault.verify().clean
