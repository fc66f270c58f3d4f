"""Deferred file deletion (DESIGN.md §3).

A row is deleted and its file queued in ``pending_deletes`` in one
transaction; the file goes afterwards. Draining runs under the write lock and
skips a path that a newer row has taken meanwhile, so it can never remove a
live file; it is idempotent, so a crash at any point just leaves work for the
next drain.
"""

from __future__ import annotations

import sqlite3

from .db import Database
from .files import LIBRARY_BUCKET, WORKSPACE_BUCKET, FileStore

BATCH = 500


def queue_delete(conn: sqlite3.Connection, bucket: str, path: str) -> None:
    """Record that ``bucket/path`` must go (inside the deleting transaction)."""
    conn.execute("INSERT OR IGNORE INTO pending_deletes (bucket, path) VALUES (?, ?)", (bucket, path))


def _still_used(conn: sqlite3.Connection, bucket: str, path: str) -> bool:
    if bucket == WORKSPACE_BUCKET:
        sql = "SELECT 1 FROM workspace_assets WHERE temp_storage_path = ?"
    else:
        sql = "SELECT 1 FROM user_library WHERE storage_path = ?"
    return conn.execute(sql, (path,)).fetchone() is not None


def drain(db: Database, files: FileStore) -> int:
    """Remove every queued file; return how many entries were settled."""
    settled = 0
    while True:
        with db.write() as conn:
            batch = conn.execute("SELECT id, bucket, path FROM pending_deletes ORDER BY id LIMIT ?", (BATCH,)).fetchall()
            for _id, bucket, path in batch:
                if not _still_used(conn, bucket, path):
                    files.remove(bucket, path)
            conn.executemany("DELETE FROM pending_deletes WHERE id = ?", [(row[0],) for row in batch])
        settled += len(batch)
        if len(batch) < BATCH:
            return settled


__all__ = ["queue_delete", "drain", "LIBRARY_BUCKET", "WORKSPACE_BUCKET"]
