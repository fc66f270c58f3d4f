"""The four processes of tests/test_concurrency_full.py. Each runs for ``seconds`` and writes a JSON result.

Run as ``python -m reliability.workers <role> <vault> <seconds> <result.json> [extra]`` with tests/ on PYTHONPATH.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from localvault import NotFoundError, Vault


def _ids(root: Path, sql: str) -> list[str]:
    conn = sqlite3.connect(f"file:{root / 'vault.db'}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in conn.execute(sql)]
    finally:
        conn.close()


def watcher(root: Path, seconds: float, result: dict[str, Any], rig: str) -> None:
    """A rig writes ~1 KB PNGs into its output folder; a Watcher (or, without one, an add loop) imports them."""
    from reliability.common import tiny_png

    folder = Path(rig)
    folder.mkdir(parents=True, exist_ok=True)
    vault = Vault.open(root)
    written = 0
    try:
        from localvault.watch import Watcher
    except ImportError:
        Watcher = None  # type: ignore[assignment,misc]
    result["mode"] = "Watcher" if Watcher else "workspace.add loop"
    deadline = time.monotonic() + seconds
    if Watcher is not None:
        watch = Watcher(vault, folder)
        watch.start()
        while time.monotonic() < deadline:
            for _ in range(3):
                temp = folder / f".writing-{written}.tmp"
                temp.write_bytes(tiny_png(written, salt=5))
                temp.rename(folder / f"gen-{written:06d}.png")
                written += 1
            time.sleep(0.1)
        wait_until = time.monotonic() + 60
        while time.monotonic() < wait_until and vault.workspace.count() < written:
            time.sleep(0.2)
        report = watch.stop()
        imported = report.imported
        result["imported"] = len(imported) if isinstance(imported, (list, tuple)) else int(imported)
        result["duplicates"] = len(report.duplicates)
        result["errors"] += [f"refused {k}: {v}" for k, v in report.refused.items()]
    else:
        imported = 0
        while time.monotonic() < deadline:
            path = folder / f"gen-{written:06d}.png"
            path.write_bytes(tiny_png(written, salt=5))
            written += 1
            vault.workspace.add(path)
            imported += 1
        result["imported"] = imported
    result["written"] = written
    vault.close()


def app(root: Path, seconds: float, result: dict[str, Any], _extra: str) -> None:
    """An app saving workspace assets into the library, moving and editing them."""
    rng = random.Random(11)
    vault = Vault.open(root)
    names = [c.name for c in vault.collections.list()]
    saved = moved = raced = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fresh = vault.db.conn.execute(
            "SELECT w.id FROM workspace_assets w WHERE NOT EXISTS (SELECT 1 FROM user_library l WHERE l.sha256 = w.sha256)"
            " ORDER BY w.created_at DESC LIMIT 5").fetchall()
        for (asset_id,) in fresh[:2]:
            vault.library.save(asset_id, title=f"saved {saved}", tags=["app"], collection=rng.choice([*names, None]))
            saved += 1
        kept = [r[0] for r in vault.db.conn.execute("SELECT id FROM user_library ORDER BY random() LIMIT 3")]
        for asset_id in kept:
            try:
                if rng.random() < 0.5:
                    vault.library.move(asset_id, rng.choice([*names, None]))
                else:
                    vault.library.update(asset_id, title=f"edit {rng.random():.5f}", favorite=rng.random() < 0.5)
                moved += 1
            except NotFoundError:
                raced += 1  # the CLI deleted it meanwhile: expected, not an error
        time.sleep(0.02)
    result.update(saved=saved, moved=moved, raced=raced)
    vault.close()


def deleter(root: Path, seconds: float, result: dict[str, Any], _extra: str) -> None:
    """The CLI deleting library assets: one ``localvault rm`` process per deletion."""
    from reliability.common import CLI, cli_env

    rng = random.Random(13)
    deleted = missing = 0
    stderr: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ids = _ids(root, "SELECT id FROM user_library")
        if len(ids) < 5:
            time.sleep(0.2)
            continue
        run = subprocess.run([*CLI, "rm", rng.choice(ids)], capture_output=True, text=True, env=cli_env(root), timeout=120)
        if run.returncode == 0:
            deleted += 1
        elif run.returncode == 2:
            missing += 1
        else:
            stderr.append(f"exit {run.returncode}: {run.stderr.strip()}")
        if run.stderr.strip():
            stderr.append(run.stderr.strip())
    result.update(deleted=deleted, missing=missing)
    result["errors"] += stderr


def syncer(root: Path, seconds: float, result: dict[str, Any], _extra: str) -> None:
    """A sync pushing in a loop (Vault.sync, the remote from localvault.toml)."""
    vault = Vault.open(root)
    runs = rows = files = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        report = vault.sync()
        runs += 1
        result.setdefault("seconds", []).append(round(report.seconds, 2))
        rows += report.rows_written + report.rows_deleted
        result["batches"] = result.get("batches", 0) + report.batches
        files += report.files_uploaded
        if report.rejected:
            result["errors"].append(f"{report.rejected} changes rejected")
        time.sleep(0.2)
    result.update(runs=runs, rows=rows, files=files)
    vault.close()


ROLES = {"watcher": watcher, "app": app, "deleter": deleter, "syncer": syncer}


def main() -> None:
    role, root, seconds, out = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
    extra = sys.argv[5] if len(sys.argv) > 5 else ""
    result: dict[str, Any] = {"role": role, "errors": []}
    try:
        ROLES[role](root, seconds, result, extra)
    except BaseException as exc:  # every failure must reach the test
        result["errors"].append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
