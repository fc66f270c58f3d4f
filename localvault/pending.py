"""Deferred file deletion (DESIGN.md §3).

A row is deleted and its file queued in ``pending_deletes`` in one
transaction; the file goes afterwards. Draining runs under the write lock and
skips a path that a newer row has taken meanwhile, so it can never remove a
live file; it is idempotent, so a crash at any point just leaves work for the
next drain.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._disk import fsync_folders_left
from .db import Database
from .errors import LocalVaultError, StorageError
from .files import LIBRARY_BUCKET, WORKSPACE_BUCKET, FileStore
from .models import SURROGATES

BATCH = 500
#: How long :func:`drain_after_commit` waits for the write lock (its call is done: not the vault's 60 s).
AFTER_COMMIT_WAIT_MS = 5_000

log = logging.getLogger("localvault.pending")


def queue_delete(conn: sqlite3.Connection, bucket: str, *paths: str) -> None:
    """Record that ``bucket/path`` (for each path) must go (inside the deleting transaction)."""
    conn.executemany("INSERT OR IGNORE INTO pending_deletes (bucket, path) VALUES (?, ?)",
                     [(bucket, path) for path in paths])


#: Each bucket's table, and the column holding its files' paths (unique, indexed).
PATH_COLUMNS = {WORKSPACE_BUCKET: ("workspace_assets", "temp_storage_path"),
                LIBRARY_BUCKET: ("user_library", "storage_path")}
_PATHS_PAGE = 900


def still_used(conn: sqlite3.Connection, bucket: str, path: str) -> bool:
    """Whether a row uses ``bucket/path`` (one may have taken it since the file was queued)."""
    table, column = PATH_COLUMNS[bucket]
    return conn.execute(f"SELECT 1 FROM {table} WHERE {column} = ?", (path,)).fetchone() is not None


def paths_in_use(conn: sqlite3.Connection, bucket: str, paths: list[str]) -> set[str]:
    """Which of ``paths`` (in ``bucket``) a row uses: a page of them looked up per query. A name that is not
    UTF-8 (Python holds its bytes as lone surrogates) can have no row."""
    table, column = PATH_COLUMNS[bucket]
    storable = [path for path in paths if not SURROGATES.search(path)]
    used: set[str] = set()
    for start in range(0, len(storable), _PATHS_PAGE):
        page = storable[start:start + _PATHS_PAGE]
        used.update(row[0] for row in conn.execute(
            f"SELECT {column} FROM {table} WHERE {column} IN ({','.join('?' * len(page))})", page))
    return used


def make_removals_durable(files: FileStore, places: Iterable[tuple[str, str]]) -> None:
    """fsync each folder files were removed from (``(bucket, folder)``; its parent, where an emptied job folder
    went too) before the record of their deletion is dropped: after a power cut, a removal never made durable
    brings the file back (a deleted, perhaps private, image) with nothing left to say it must go. Local disks
    only."""
    if not files.local:
        return
    by_bucket: dict[str, list[str]] = {}
    for bucket, folder in places:
        by_bucket.setdefault(bucket, []).append(files.full_path(bucket, folder))
    for bucket, folders in by_bucket.items():
        top = files.full_path(bucket, "").rstrip("/")
        try:
            fsync_folders_left(top, folders)
        except OSError as exc:
            raise StorageError(f"cannot make the removals from {exc.filename or top} durable: "
                               f"{exc.strerror or exc}") from None


def is_queued(conn: sqlite3.Connection, bucket: str, path: str) -> bool:
    """Whether the deletion of ``bucket/path`` is queued (its row is gone; a drain removes the file); never for
    a name that is not UTF-8 (no row could hold it)."""
    if SURROGATES.search(path):
        return False
    return conn.execute("SELECT 1 FROM pending_deletes WHERE bucket = ? AND path = ?",
                        (bucket, path)).fetchone() is not None


def settle(conn: sqlite3.Connection, files: FileStore, limit: int = BATCH,
           io_map: Callable[..., Iterator[Any]] = map, after_id: int = 0) -> tuple[int, int]:
    """Inside an open write transaction: remove up to ``limit`` queued files after entry ``after_id``.

    Returns how many entries were settled (the file removed, found gone, or
    its path taken by a newer row) and the last entry id looked at: given
    back as ``after_id``, the next call goes on past files that could not be
    removed (they stay queued for :func:`drain`) instead of trying them, and
    warning, again.

    The entries were committed by an earlier transaction, so a crash here only
    means the next drain removes them again (removal is idempotent). Files
    are removed (and their emptied job folders) before the caller commits, so
    while the write lock is held: no new row can take a path meanwhile.
    ``io_map`` may be a thread pool's ``map``: removals then overlap, one job
    folder per task (unlinking waits on the disk here far more than it works).
    """
    settled, _seen, last_id = _settle(conn, files, limit, io_map, after_id)
    return settled, last_id


def _settle(conn: sqlite3.Connection, files: FileStore, limit: int, io_map: Callable[..., Iterator[Any]],
            after_id: int = 0) -> tuple[int, int, int]:
    """:func:`settle` from the entry after ``after_id``: (settled, looked at, last id looked at).

    An entry whose file cannot be removed stays queued (a warning says so), and a drain goes on past it.
    """
    batch = conn.execute("SELECT id, bucket, path FROM pending_deletes WHERE id > ? ORDER BY id LIMIT ?",
                         (after_id, limit)).fetchall()
    by_folder: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for entry_id, bucket, path in batch:
        if not still_used(conn, bucket, path):
            by_folder.setdefault((bucket, os.path.dirname(path)), []).append((entry_id, path))

    def remove(item: tuple[tuple[str, str], list[tuple[int, str]]]) -> list[tuple[int, str]]:
        (bucket, folder), entries = item
        failed = []
        for entry_id, path in entries:
            try:
                files.remove(bucket, path, prune=False)
            except StorageError as exc:  # one file that cannot go must not stop the others (or every open)
                failed.append((entry_id, str(exc)))
        files.prune_folders(bucket, [folder])  # one rmdir per job folder, not per file
        return failed

    failures = [failure for failed in io_map(remove, list(by_folder.items())) for failure in failed]
    if failures:
        log.warning("%d queued file(s) could not be removed (%s%s); they stay queued and are tried again later",
                    len(failures), failures[0][1], ", …" if len(failures) > 1 else "")
    kept = {entry_id for entry_id, _reason in failures}
    try:  # one fsync per folder left (pruned: their parent)
        make_removals_durable(files, by_folder)
    except StorageError as exc:  # the entries stay queued: the next drain finds the files gone, and settles
        log.warning("%s; the deletions stay queued and are tried again later", exc)
        kept.update(entry_id for entries in by_folder.values() for entry_id, _path in entries)
    conn.executemany("DELETE FROM pending_deletes WHERE id = ?", [(row[0],) for row in batch if row[0] not in kept])
    return len(batch) - len(kept), len(batch), batch[-1][0] if batch else after_id


def drain(db: Database, files: FileStore, io_map: Callable[..., Iterator[Any]] = map, *,
          wait_ms: int | None = None) -> int:
    """Remove every queued file; return how many entries were settled (``io_map``: see :func:`settle`;
    ``wait_ms``: how long to wait for the write lock, by default the vault's)."""
    settled, after_id = 0, 0
    while True:
        with db.write(wait_ms=wait_ms) as conn:
            done, seen, after_id = _settle(conn, files, BATCH, io_map, after_id)
        settled += done
        if seen < BATCH:
            return settled


def drain_after_commit(db: Database, files: FileStore) -> None:
    """:func:`drain` after a call's own write committed: a failure here (the write lock held too long, a file
    that cannot be removed) must not report that committed call as failed; the files stay queued for the next
    drain (a delete, housekeeping, the vault's next open)."""
    try:
        drain(db, files, wait_ms=AFTER_COMMIT_WAIT_MS)
    except LocalVaultError as exc:
        log.warning("queued file(s) could not be removed now (%s); they are tried again later", exc)


__all__ = ["queue_delete", "settle", "make_removals_durable", "drain", "drain_after_commit", "still_used", "paths_in_use", "PATH_COLUMNS", "LIBRARY_BUCKET",
           "WORKSPACE_BUCKET"]
