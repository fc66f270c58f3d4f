"""Check that rows and files agree: orphans, missing files, hash mismatches; optionally repair."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import pending
from .db import Database
from .files import LIBRARY_BUCKET, TEMP_PREFIX, WORKSPACE_BUCKET, FileStore
from .progress import ProgressCallback, report

#: A temporary file younger than this may belong to a write in progress in another process.
STALE_TEMP_SECONDS = 3600


@dataclass
class VerifyReport:
    """What :func:`verify` found (paths are ``bucket/relative``) and what it repaired."""

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    stale_temps: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepairable: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing is wrong (after repair, if repair ran and fixed everything)."""
        problems = len(self.missing) + len(self.orphans) + len(self.mismatched) + len(self.stale_temps)
        return problems == 0 or (bool(self.repaired) and not self.unrepairable and len(self.repaired) == problems)


def _rows(db: Database) -> dict[tuple[str, str], tuple[str, str, str]]:
    """{(bucket, path): (table, id, sha256)} for every row of every user."""
    found: dict[tuple[str, str], tuple[str, str, str]] = {}
    for path, row_id, sha in db.conn.execute("SELECT temp_storage_path, id, sha256 FROM workspace_assets"):
        found[(WORKSPACE_BUCKET, path)] = ("workspace_assets", row_id, sha)
    for path, row_id, sha in db.conn.execute("SELECT storage_path, id, sha256 FROM user_library"):
        found[(LIBRARY_BUCKET, path)] = ("user_library", row_id, sha)
    return found


def verify(db: Database, files: FileStore, *, repair: bool = False, check_hashes: bool = True,
           progress: ProgressCallback | None = None) -> VerifyReport:
    """Compare every row with its file and every file with its row.

    With ``repair``: orphan and stale temporary files are removed (they were
    never committed); a missing or damaged file is restored from a twin with
    the same hash where one exists; a row whose file is gone for good is
    removed (its asset was already lost) and listed as repaired.
    """
    pending.drain(db, files)
    result = VerifyReport()
    expected = _rows(db)
    report(progress, "verify", total=len(expected))
    on_disk: set[tuple[str, str]] = set()
    now = time.time()
    for bucket in (WORKSPACE_BUCKET, LIBRARY_BUCKET):
        for relative in files.walk(bucket):
            name = os.path.basename(relative)
            if name.startswith(TEMP_PREFIX):
                if _age(files, bucket, relative, now) > STALE_TEMP_SECONDS:
                    result.stale_temps.append(f"{bucket}/{relative}")
                continue
            on_disk.add((bucket, relative))
            if (bucket, relative) not in expected:
                result.orphans.append(f"{bucket}/{relative}")
    by_hash: dict[str, tuple[str, str]] = {}
    for (bucket, relative), (_table, _id, sha) in expected.items():
        result.checked += 1
        if (bucket, relative) not in on_disk:
            result.missing.append(f"{bucket}/{relative}")
        elif check_hashes and files.sha256(bucket, relative) != sha:
            result.mismatched.append(f"{bucket}/{relative}")
        else:
            by_hash.setdefault(sha, (bucket, relative))
        report(progress, "verify", advance=1, total=len(expected))
    if repair:
        _repair(db, files, result, expected, by_hash)
    return result


def _age(files: FileStore, bucket: str, relative: str, now: float) -> float:
    path = files.local_path(bucket, relative)
    try:
        return now - os.stat(path).st_mtime if path else STALE_TEMP_SECONDS + 1
    except OSError:
        return 0.0


def _repair(db: Database, files: FileStore, result: VerifyReport,
            expected: dict[tuple[str, str], tuple[str, str, str]], by_hash: dict[str, tuple[str, str]]) -> None:
    for entry in result.orphans + result.stale_temps:
        bucket, relative = entry.split("/", 1)
        with db.write() as conn:  # under the lock: a row may have claimed the path meanwhile
            if not pending.still_used(conn, bucket, relative):
                files.remove(bucket, relative)
        result.repaired.append(entry)
    for entry in result.missing + result.mismatched:
        bucket, relative = entry.split("/", 1)
        table, row_id, sha = expected[(bucket, relative)]
        twin = by_hash.get(sha)
        if twin is not None:
            files.link(twin[0], twin[1], bucket, relative)
            result.repaired.append(entry)
        elif entry in result.missing:
            with db.write() as conn:
                conn.execute(f"DELETE FROM {table} WHERE id = ?", (row_id,))
            result.repaired.append(entry)
        else:
            result.unrepairable.append(entry)
