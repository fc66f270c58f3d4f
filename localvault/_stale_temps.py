"""Temporary files that writes killed before their rename left in the buckets: removed once stale, a day at a time.

A write copies its file under a temporary name (:data:`TEMP_PREFIX`) in its final folder, then renames it into
place. A process killed before the rename (SIGKILL, the OOM killer, a power cut) leaves that copy, up to 1 GiB,
which nothing names. Opening a vault for writing (and the watcher's hourly housekeeping) removes those written
(or linked) more than :data:`STALE_TEMP_SECONDS` ago, once a day (:data:`SWEEP_INTERVAL`): a walk of the buckets
of a million files took 1.5 s (files in the page cache). ``verify`` reports them at any time, and ``--repair``
removes them.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta

from ._disk import STALE_TEMP_SECONDS, TEMP_PREFIX
from .db import Database
from .errors import LocalVaultError
from .files import BUCKETS, FileStore
from .timestamps import due, utc_now

SWEEP_INTERVAL = timedelta(days=1)
_META_KEY = "last_temp_sweep"

log = logging.getLogger(__name__)


def is_stale(files: FileStore, bucket: str, relative: str, now: float) -> bool:
    """Whether ``bucket/relative`` is a temporary file left long enough that no write in progress owns it. On
    another filesystem than the local disk its age cannot be told: every temporary file counts as stale."""
    if not os.path.basename(relative).startswith(TEMP_PREFIX):
        return False
    path = files.local_path(bucket, relative)
    if path is None:
        return True
    try:
        found = os.lstat(path)
    except OSError:
        return False
    # A temp file hard-linked from a rig's old output (--link) shares that output's mtime; its link made a new
    # ctime (and so did the rig file's removal, which left the link the only copy): the later of the two counts.
    # One written over an hour "in the future" was written before the clock was set back: no write under way.
    return abs(now - max(found.st_mtime, found.st_ctime)) > STALE_TEMP_SECONDS


def sweep_due(db: Database) -> bool:
    """Whether the last sweep is more than :data:`SWEEP_INTERVAL` ago (or none was ever made, or the clock was
    set back since it was)."""
    return due(db.get_meta(_META_KEY), SWEEP_INTERVAL)


def sweep(db: Database, files: FileStore) -> list[str]:
    """Remove the stale temporary files of both buckets (local disk only) and note the sweep; the removed files,
    as ``bucket/path``. A folder that cannot be listed, or a file that cannot be removed, is passed over (and
    logged): it never stops the vault's opening."""
    if not files.local:
        return []
    now, removed = time.time(), []
    for bucket in BUCKETS:
        for relative in files.walk(bucket, on_error=lambda folder, exc: log.info("cannot list %s: %s", folder, exc)):
            if is_stale(files, bucket, relative, now):
                try:
                    files.remove(bucket, relative)
                except LocalVaultError as exc:
                    log.warning("could not remove a temporary file a write cut short left: %s", exc)
                    continue
                removed.append(f"{bucket}/{relative}")
    if removed:
        log.info("removed %d temporary file(s) that writes cut short left: %s", len(removed), ", ".join(removed[:10]))
    with db.write() as conn:
        db.set_meta(conn, _META_KEY, utc_now())
    return removed


__all__ = ["SWEEP_INTERVAL", "is_stale", "sweep", "sweep_due"]
