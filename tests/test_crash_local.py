"""SIGKILL the local writers (``localvault import`` and ``localvault cleanup``) at random moments.

After every kill: the vault opens, ``verify`` is clean (or ``verify --repair``
makes it clean) and no committed asset is lost — every row present before the
kill whose file existed is still there, unless it had expired (cleanup removes
an expired asset; an import of the same bytes replaces it with a new one).
At the end a clean import brings the counts to exactly the number of source
files, and rows and files agree one to one.

Replay a failure with ``LOCALVAULT_CRASH_SEED=<seed printed> pytest tests/test_crash_local.py``.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path

import pytest
from reliability.common import USER_A, kill_at, run_cli, spawn_cli, spawn_python, write_pngs

from localvault import DuplicateError, Vault, _stale_temps
from localvault.files import TEMP_PREFIX, WORKSPACE_BUCKET

KILLS = int(os.environ.get("LOCALVAULT_CRASH_LOCAL_KILLS", "30"))
NEW_FILES_PER_TRIAL = 25
EXPIRED_PER_TRIAL = 40

#: Used when the CLI has no ``import`` command yet: ``localvault add``'s code path, in a loop, in one process.
ADD_LOOP = """
import sys
from pathlib import Path
from localvault import DuplicateError, Vault
vault = Vault.open(sys.argv[1])
for path in sorted(Path(sys.argv[2]).iterdir()):
    try:
        vault.workspace.add(path)
    except DuplicateError:
        pass
"""


def _has_import_command() -> bool:
    return run_cli(None, "import", "--help").returncode == 0


def _rows(db_path: Path) -> dict[str, tuple[str, str]]:
    """{id: (path, expires_at)} of every workspace row."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, temp_storage_path, expires_at FROM workspace_assets")}
    finally:
        conn.close()


def _files(root: Path) -> tuple[set[str], list[Path]]:
    base = root / WORKSPACE_BUCKET
    final, temps = set(), []
    for folder, _dirs, names in os.walk(base):
        for name in names:
            path = Path(folder) / name
            if name.startswith(TEMP_PREFIX):
                temps.append(path)
            else:
                final.add(os.path.relpath(path, base))
    return final, temps


@pytest.mark.slow
def test_sigkill_during_import_and_cleanup_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("LOCALVAULT_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\ncrash-local seed: {seed} (replay with LOCALVAULT_CRASH_SEED={seed})")
    rng = random.Random(seed)
    root = tmp_path / "vault"
    src = tmp_path / "rig-output"
    Vault.create(root, user_id=USER_A).close()
    use_import = _has_import_command()
    next_file = 0

    def writer() -> object:
        if use_import:
            return spawn_cli(root, "import", str(src), "--json", "--no-progress")
        return spawn_python(ADD_LOOP, str(root), str(src))

    def new_sources(count: int) -> None:
        nonlocal next_file
        write_pngs(src, next_file, count)
        next_file += count

    def expire_some(count: int) -> None:
        with Vault.open(root) as vault:
            ids = [r[0] for r in vault.db.conn.execute("SELECT id FROM workspace_assets WHERE expires_at > strftime("
                                                       "'%Y-%m-%dT%H:%M:%fZ', 'now')")]
            for asset_id in rng.sample(ids, min(count, len(ids))):
                vault.workspace.expire(asset_id)

    # Windows: one clean run of each, at the size of a trial, measured (process start included).
    new_sources(200)
    proc = writer()
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    proc.stderr.close()
    new_sources(NEW_FILES_PER_TRIAL)
    started = time.monotonic()
    proc = writer()
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    proc.stderr.close()
    import_window = time.monotonic() - started
    expire_some(EXPIRED_PER_TRIAL)
    started = time.monotonic()
    run_cli(root, "cleanup", check=True)
    cleanup_window = time.monotonic() - started
    print(f"writer: {'localvault import' if use_import else 'workspace.add loop'}; clean import of "
          f"{NEW_FILES_PER_TRIAL} new files {import_window:.2f} s, clean cleanup of {EXPIRED_PER_TRIAL} {cleanup_window:.2f} s")

    stats = {"kills": 0, "killed while running": 0, "opened after kill": 0, "verify clean at once": 0,
             "made clean by --repair": 0, "temp files left by kills": 0, "committed assets lost": 0}
    seen_temps: set[Path] = set()
    for trial in range(2 * KILLS):
        kind = "import" if trial % 2 == 0 else "cleanup"
        if kind == "import":
            new_sources(NEW_FILES_PER_TRIAL)
            proc, window = writer(), import_window
        else:
            expire_some(EXPIRED_PER_TRIAL)
            proc, window = spawn_cli(root, "cleanup"), cleanup_window
        before = _rows(root / "vault.db")
        on_disk, _ = _files(root)
        committed = {i: v for i, v in before.items() if v[0] in on_disk}
        stats["kills"] += 1
        alive = kill_at(proc, rng.uniform(0, window))
        if alive:
            stats["killed while running"] += 1
        else:
            assert proc.returncode == 0, f"{kind} trial {trial} (seed {seed}) exited {proc.returncode}"

        with Vault.open(root) as vault:  # opening settles leftover deletions
            stats["opened after kill"] += 1
            report = vault.verify()
            if report.clean:
                stats["verify clean at once"] += 1
            else:
                assert vault.verify(repair=True).clean, f"trial {trial} (seed {seed}): repair failed: {report}"
                stats["made clean by --repair"] += 1
                assert vault.verify().clean
        after = _rows(root / "vault.db")
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        for asset_id, (_path, expires_at) in committed.items():
            if expires_at[:19] <= now:
                continue  # expired: cleanup may remove it, an import of its bytes replace it
            if asset_id not in after:
                stats["committed assets lost"] += 1
        assert stats["committed assets lost"] == 0, f"{kind} trial {trial} (seed {seed}) lost committed assets"
        final, temps = _files(root)
        assert final == {p for p, _ in after.values()}, f"trial {trial}: rows and files disagree"
        seen_temps.update(temps)
        stats["temp files left by kills"] = len(seen_temps)

    # A temporary file is only removed once an hour old (it may belong to a running writer), by its mtime and its
    # ctime, which no utime sets back: the hour is made nothing for a repair in this process.
    with pytest.MonkeyPatch.context() as aged:
        aged.setattr(_stale_temps, "STALE_TEMP_SECONDS", -1.0)
        with Vault.open(root) as vault:
            assert vault.verify(repair=True).clean
    assert _files(root)[1] == []
    # Finish: one clean cleanup (the last trial may have been killed before removing every expired asset,
    # and an import skips files whose expired rows remain), one clean import, one clean cleanup; counts exact.
    run_cli(root, "cleanup", check=True)
    if use_import:
        run_cli(root, "import", str(src), "--no-progress", check=True)
    else:
        proc = spawn_python(ADD_LOOP, str(root), str(src))
        assert proc.wait(timeout=300) == 0
        proc.stderr.close()
    run_cli(root, "cleanup", check=True)
    result = run_cli(root, "verify")
    assert result.returncode == 0 and "vault is clean" in result.stdout, result.stdout + result.stderr
    rows = _rows(root / "vault.db")
    final, temps = _files(root)
    assert len(rows) == next_file == len(list(src.iterdir())), (len(rows), next_file)
    assert final == {p for p, _ in rows.values()} and not temps
    with Vault.open(root) as vault:
        assert vault.workspace.count() == next_file
        try:  # re-adding any source is refused as a duplicate: nothing was stored twice
            vault.workspace.add(next(src.iterdir()))
            raise AssertionError("a duplicate was accepted")
        except DuplicateError:
            pass
    print(f"crash-local: {stats}; final workspace {len(rows)} assets = {next_file} source files; lost 0, duplicated 0")
