"""Four processes on one vault for 60 s: a watcher importing, an app saving and moving, the CLI
deleting, a sync pushing. No "database is locked", no error, exact counts, and the server equal to
the vault after the last sync.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from reliability.common import USER_A, add_users, assert_server_mirrors, cli_env, remote_set_args, run_cli

from localvault import Vault

SECONDS = float(os.environ.get("LOCALVAULT_CONCURRENCY_SECONDS", "60"))
TESTS_DIR = Path(__file__).resolve().parent


@pytest.mark.slow
def test_four_processes_for_a_minute(pg_database: str, s3_bucket: Any, tmp_path: Path) -> None:
    add_users(pg_database, USER_A)
    root = tmp_path / "vault"
    with Vault.create(root, user_id=USER_A) as vault:
        for name in ("red", "green", "blue"):
            vault.collections.create(name)
    run_cli(root, *remote_set_args(pg_database, s3_bucket), check=True)
    env = cli_env(root)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    procs = {}
    for role in ("watcher", "app", "deleter", "syncer"):
        out = tmp_path / f"{role}.json"
        procs[role] = (subprocess.Popen(
            [sys.executable, "-m", "reliability.workers", role, str(root), str(SECONDS), str(out), str(tmp_path / "rig")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out)
    results: dict[str, dict[str, Any]] = {}
    for role, (proc, out) in procs.items():
        stdout, stderr = proc.communicate(timeout=SECONDS + 240)
        assert proc.returncode == 0, f"{role} exited {proc.returncode}:\n{stdout}\n{stderr}"
        results[role] = json.loads(out.read_text())
        results[role]["stderr"] = stderr.strip()
    problems = [f"{role}: {e}" for role, r in results.items() for e in r["errors"]]
    problems += [f"{role} stderr: {r['stderr']}" for role, r in results.items() if r["stderr"]]
    assert not [p for p in problems if "locked" in p], problems
    assert not problems, problems

    run_cli(root, "sync", check=True)
    with Vault.open(root) as vault:
        workspace, library = vault.workspace.count(), vault.library.count()
        assert vault.verify().clean
        pending = vault.db.conn.execute("SELECT count(*) FROM sync_outbox").fetchone()[0]
    watcher, app, deleter, syncer = (results[r] for r in ("watcher", "app", "deleter", "syncer"))
    assert watcher["imported"] == watcher["written"] == workspace, watcher
    assert library == app["saved"] - deleter["deleted"], (library, app, deleter)
    assert deleter["missing"] == 0 and pending == 0
    counts = assert_server_mirrors(root / "vault.db", USER_A, pg_database, s3_bucket)
    assert counts["user_library"] == library
    assert syncer["runs"] >= 1 and deleter["deleted"] >= 5 and app["saved"] >= 20, results
    print(f"\nconcurrency ({SECONDS:.0f} s, 4 processes, {results['watcher']['mode']}): imported {watcher['imported']}, "
          f"saved {app['saved']}, moved/edited {app['moved']} ({app['raced']} raced with a delete), "
          f"CLI rm {deleter['deleted']}, syncs {syncer['runs']} ({syncer.get('batches', 0)} batches, {syncer['rows']} rows, {syncer['files']} files); "
          f"final library {library} = server; 0 'database is locked', 0 errors")
