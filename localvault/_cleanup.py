"""Expiry: set a workspace asset's (:meth:`Workspace.expire`), and remove the expired assets of every user, rows
then files (:meth:`Workspace.cleanup`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import pending
from .db import Database
from .errors import InvalidInputError, NotFoundError
from .files import WORKSPACE_BUCKET, FileStore
from .models import check_callback, check_whole_number
from .progress import ProgressCallback, report
from .timestamps import format_time, parse_time, utc_now

#: Threads removing expired files (each removal mostly waits on the disk).
CLEANUP_THREADS = 4
#: Assets removed per transaction.
CLEANUP_BATCH = 2_000


@dataclass(frozen=True)
class CleanupReport:
    """What :meth:`Workspace.cleanup` removed."""

    assets_removed: int
    #: Queued files settled: deleted, found already gone, or their path taken by a newer asset. Files that
    #: could not be removed (a warning says why) stay queued for a later cleanup and are not counted.
    files_removed: int
    complete: bool


def set_expiry(db: Database, user_id: str, asset_id: str, when: datetime | None) -> None:
    """Set the expiry of ``user_id``'s workspace asset ``asset_id`` to ``when`` (now when None), 1 ms after its
    creation at the earliest."""
    if when is not None and not isinstance(when, datetime):
        raise InvalidInputError(f"when must be a datetime, not {when!r}")
    try:
        moment = format_time(when) if when is not None else utc_now()
    except (OverflowError, ValueError, OSError):  # datetime.max west of UTC; datetime.min as local time
        raise InvalidInputError(f"when {when!r} is out of range in UTC; give a date at least a day inside the "
                                "years 1 to 9999, or a timezone-aware datetime") from None
    with db.write() as conn:
        found = conn.execute(
            "SELECT created_at FROM workspace_assets WHERE id = ? AND user_id = ?", (asset_id, user_id)
        ).fetchone()
        if found is None:
            raise NotFoundError(f"no workspace asset {asset_id} in this vault")
        # A creation later than now was stamped while the clock ran ahead: it is taken as now, or the asset
        # would outlive an expiry asked for now until the clock caught up (an expiry follows its creation).
        created = min(found[0], utc_now())
        if moment <= created:
            moment = format_time(parse_time(created) + timedelta(milliseconds=1))
        conn.execute("UPDATE workspace_assets SET created_at = ?, expires_at = ? WHERE id = ?",
                     (created, moment, asset_id))


def remove_expired(db: Database, files: FileStore, *, progress: ProgressCallback | None = None,
                   max_assets: int | None = None) -> CleanupReport:
    """Remove expired workspace assets (all of them, or up to ``max_assets``), then their files.

    Works in transactions of 2,000 assets (each also removes the files the
    previous one queued), so other writers wait a fraction of a second at most
    and readers never (WAL). ``last_cleanup`` is recorded only when none is left.
    """
    check_callback(progress, "progress")
    if max_assets is not None:
        check_whole_number(max_assets, "max_assets", 1, hint=" (or None: all)")
    now = utc_now()
    total = db.conn.execute("SELECT count(*) FROM workspace_assets WHERE expires_at <= ?", (now,)).fetchone()[0]
    if max_assets is not None:
        total = min(total, max_assets)
    report(progress, "cleanup", total=total)
    with ThreadPoolExecutor(CLEANUP_THREADS, thread_name_prefix="localvault-cleanup") as pool:
        complete, removed, files_removed = _batches(db, files, now, total, max_assets, pool.map, progress)
        files_removed += pending.drain(db, files, pool.map)
    if complete:
        with db.write() as conn:
            db.set_meta(conn, "last_cleanup", now)
    return CleanupReport(assets_removed=removed, files_removed=files_removed, complete=complete)


def _batches(db: Database, files: FileStore, now: str, total: int, max_assets: int | None,
             io_map: Callable[..., Iterator[Any]], progress: ProgressCallback | None) -> tuple[bool, int, int]:
    """(whether no expired asset is left, assets removed, queued files settled)."""
    removed = files_removed = 0
    complete = True
    settled_to = 0  # queued entries looked at (a file that cannot go is left to the final drain)
    while True:
        batch_size = CLEANUP_BATCH if max_assets is None else min(CLEANUP_BATCH, max_assets - removed)
        if batch_size <= 0:
            complete = db.conn.execute(
                "SELECT 1 FROM workspace_assets WHERE expires_at <= ? LIMIT 1", (now,)).fetchone() is None
            break
        with db.write() as conn:
            # The files of the previous batch (queued, committed) go in this
            # transaction: one commit, so one fsync, per batch.
            settled, settled_to = pending.settle(conn, files, CLEANUP_BATCH, io_map, settled_to)
            doomed = conn.execute(
                "DELETE FROM workspace_assets WHERE id IN (SELECT id FROM workspace_assets WHERE expires_at <= ?"
                " LIMIT ?) RETURNING temp_storage_path",
                (now, batch_size),
            ).fetchall()
            pending.queue_delete(conn, WORKSPACE_BUCKET, *(row[0] for row in doomed))
        removed += len(doomed)
        files_removed += settled
        report(progress, "cleanup", advance=len(doomed), total=total)
        if len(doomed) < batch_size:
            break
    return complete, removed, files_removed
