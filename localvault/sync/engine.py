"""The push loop (DESIGN.md §4): read the outbox, upload files, write rows, acknowledge.

Outbox rows are removed only after the server has committed the batch (and
the objects of deleted rows are gone), so a crash anywhere means the next run
resends the batch; upserts are idempotent and last-writer-wins, so the end
state is the same.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import psycopg

from ..errors import InvalidInputError, OfflineError, SyncBusyError, SyncError
from ..files import LIBRARY_BUCKET
from ..progress import ProgressCallback, report
from .bucket import Bucket
from .remote import LIBRARY_COLUMNS, COLLECTION_COLUMNS, BatchResult, Changes, Remote

if TYPE_CHECKING:
    from ..vault import Vault

BATCH_ROWS = 5_000
UPLOAD_WORKERS = 16
#: With more files than this to check, one fresh listing beats a HEAD per file.
LISTING_THRESHOLD = 50
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
T = TypeVar("T")


@dataclass
class SyncReport:
    """What a sync did (or, with dry_run, would do)."""

    dry_run: bool = False
    rows_written: int = 0
    rows_deleted: int = 0
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    files_skipped: int = 0
    objects_deleted: int = 0
    conflicts: int = 0
    rejected: int = 0
    batches: int = 0
    pending_changes: int = 0
    seconds: float = 0.0


@dataclass
class RejectedChange:
    table_name: str
    row_id: str
    op: str
    sqlstate: str
    message: str
    rejected_at: str


@dataclass
class SyncStatus:
    """``localvault status``: online or not, what waits, what was refused, when we last synced."""

    online: bool
    offline_reason: str | None
    pending_changes: int
    rejected: list[RejectedChange] = field(default_factory=list)
    last_sync: str | None = None
    remote: str | None = None


def remote_for(vault: "Vault", remote: Remote | None) -> Remote:
    if remote is not None:
        return remote
    if vault.config.remote is None:
        raise InvalidInputError("no remote is set; run 'localvault remote set --database-url … --bucket …' first")
    cfg = vault.config.remote
    return Remote(cfg.database_url, cfg.bucket_url, cfg.storage_options)


class _SyncLock:
    """One sync per vault at a time (an flock on .sync.lock; released by the OS if we die)."""

    def __init__(self, root: Path) -> None:
        self.path = root / ".sync.lock"
        self.fd: int | None = None

    def __enter__(self) -> "_SyncLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise SyncBusyError("another sync of this vault is running; wait for it to finish") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


@contextmanager
def _closing(target: Remote | None) -> Iterator[None]:
    """Close a Remote that push() opened itself (a caller's Remote stays open for reuse)."""
    try:
        yield
    finally:
        if target is not None:
            target.close()


def _retrying(action: Callable[[], T], what: str, on_retry: Callable[[], None] | None = None) -> T:
    """Run ``action``, retrying connection trouble with backoff; OfflineError when it persists."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return action()
        except (psycopg.OperationalError, OfflineError, OSError) as exc:
            if isinstance(exc, (FileNotFoundError, PermissionError)):
                raise
            if delay is None:
                raise OfflineError(f"{what} failed after {len(RETRY_DELAYS) + 1} attempts: {_first_line(exc)}") from None
            if on_retry:
                on_retry()
            time.sleep(delay)
    raise AssertionError("unreachable")


def push(vault: "Vault", remote: Remote | None = None, *, dry_run: bool = False, retry_rejected: bool = False,
         progress: ProgressCallback | None = None, batch_rows: int = BATCH_ROWS) -> SyncReport:
    """Push the vault user's library and collections to the remote.

    Raises OfflineError when the server or bucket cannot be reached (nothing
    is lost: the outbox keeps every change), SchemaVersionError when the
    server's schema differs, SyncBusyError when another sync runs.
    """
    started = time.monotonic()
    target = remote_for(vault, remote)
    result = SyncReport(dry_run=dry_run)
    with _SyncLock(vault.root), _closing(target if remote is None else None):
        target.check()
        if retry_rejected and not dry_run:
            _requeue_rejected(vault)
        result.pending_changes = _pending_count(vault)
        if result.pending_changes == 0:
            _mark_synced(vault, dry_run)
            result.seconds = time.monotonic() - started
            return result
        bucket = Bucket(target.bucket_url, target.storage_options)
        _retrying(bucket.check_reachable, "reaching the bucket")
        known = _Objects(bucket, vault.user_id, result.pending_changes)
        report(progress, "rows", total=result.pending_changes)
        after_seq = 0
        while True:
            batch = _read_batch(vault, batch_rows, after_seq if dry_run else 0)
            if batch is None:
                break
            after_seq = batch.last_seq
            _upload_files(vault, bucket, known, batch, result, progress, dry_run)
            if dry_run:
                result.rows_written += len(batch.changes.collections) + len(batch.changes.library)
                result.rows_deleted += len(batch.changes.library_deletes) + len(batch.changes.collection_deletes)
                continue
            outcome = _retrying(lambda: target.apply(vault.user_id, batch.changes), "writing rows to PostgreSQL",
                                target.close)
            _retrying(lambda: _delete_objects(bucket, batch, outcome, result, vault.user_id), "deleting objects from the bucket")
            _acknowledge(vault, batch, outcome)
            result.batches += 1
            result.rows_written += outcome.written
            result.rows_deleted += outcome.deleted
            result.conflicts += outcome.conflicts
            result.rejected += len(outcome.rejected)
            report(progress, "rows", advance=len(batch.keys), total=result.pending_changes)
        _mark_synced(vault, dry_run)
    result.seconds = time.monotonic() - started
    return result


# ------------------------------------------------------------------ outbox


@dataclass
class _Batch:
    seqs: list[int]
    last_seq: int
    keys: list[tuple[str, str]]
    changes: Changes
    #: (table, row_id) → (op, storage_path, last seq) of the newest entry.
    entries: dict[tuple[str, str], tuple[str, str | None, int]]
    #: library id → (local file path, sha256, size, mime type) of rows to upsert.
    files: dict[str, tuple[str, str, int, str]]


def _pending_count(vault: "Vault") -> int:
    row = vault.db.conn.execute(
        "SELECT count(*) FROM (SELECT DISTINCT table_name, row_id FROM sync_outbox WHERE user_id = ?)", (vault.user_id,)
    ).fetchone()
    return int(row[0])


def _read_batch(vault: "Vault", limit: int, after_seq: int) -> _Batch | None:
    """The next outbox entries of this user, coalesced by row, with the rows' current state (one snapshot)."""
    with vault.db.read() as conn:
        entries = conn.execute(
            "SELECT seq, table_name, row_id, op, storage_path, queued_at FROM sync_outbox"
            " WHERE user_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (vault.user_id, after_seq, limit),
        ).fetchall()
        if not entries:
            return None
        newest: dict[tuple[str, str], tuple[str, str | None, int, str]] = {}
        for seq, table, row_id, op, path, queued_at in entries:
            previous = newest.get((table, row_id))
            newest[(table, row_id)] = (op, path or (previous[1] if previous else None), seq, queued_at)
        changes = Changes()
        files: dict[str, tuple[str, str, int, str]] = {}
        library_ids = [k[1] for k in newest if k[0] == "user_library"]
        collection_ids = [k[1] for k in newest if k[0] == "user_collections"]
        library_rows = {r["id"]: r for r in _rows(conn, "user_library", LIBRARY_COLUMNS, library_ids, vault.user_id)}
        collection_rows = {r["id"]: r for r in _rows(conn, "user_collections", COLLECTION_COLUMNS, collection_ids, vault.user_id)}
        for (table, row_id), (_op, _path, _seq, queued_at) in newest.items():
            current = (library_rows if table == "user_library" else collection_rows).get(row_id)
            if current is None:
                target = changes.library_deletes if table == "user_library" else changes.collection_deletes
                target.append({"id": row_id, "deleted_at": queued_at})
            elif table == "user_library":
                changes.library.append(current)
                files[row_id] = (vault.files.full_path(LIBRARY_BUCKET, current["storage_path"]), current["sha256"],
                                 current["file_size_bytes"], current["mime_type"])
            else:
                changes.collections.append(current)
    return _Batch(
        seqs=[e[0] for e in entries], last_seq=entries[-1][0], keys=list(newest), changes=changes,
        entries={k: (v[0], v[1], v[2]) for k, v in newest.items()}, files=files,
    )


def _rows(conn: sqlite3.Connection, table: str, columns: tuple[str, ...], ids: list[str], user_id: str) -> Iterator[dict[str, Any]]:
    for start in range(0, len(ids), 900):
        chunk = ids[start:start + 900]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            # "+user_id": look rows up by id; on user_id, SQLite would scan all the user's rows per chunk.
            f"SELECT {', '.join(columns)} FROM {table} WHERE +user_id = ? AND id IN ({marks})", (user_id, *chunk)
        ):
            record = dict(zip(columns, row))
            if table == "user_library":
                record["tags"] = json.loads(record["tags"])
                record["generation_settings"] = json.loads(record["generation_settings"])
                record["is_favorite"] = bool(record["is_favorite"])
            yield record


def _requeue_rejected(vault: "Vault") -> None:
    with vault.db.write() as conn:
        conn.execute(
            "INSERT INTO sync_outbox (table_name, row_id, op, user_id, storage_path)"
            " SELECT table_name, row_id, op, user_id, storage_path FROM sync_rejected WHERE user_id = ? ORDER BY seq",
            (vault.user_id,),
        )
        conn.execute("DELETE FROM sync_rejected WHERE user_id = ?", (vault.user_id,))


def _acknowledge(vault: "Vault", batch: _Batch, outcome: BatchResult) -> None:
    """After the server commit: drop the batch's outbox entries; keep refused ones aside."""
    with vault.db.write() as conn:
        for (table, row_id), (sqlstate, message) in outcome.rejected.items():
            op, path, seq = batch.entries[(table, row_id)]
            conn.execute(
                "INSERT OR REPLACE INTO sync_rejected (seq, table_name, row_id, op, user_id, storage_path, sqlstate, message)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, table, row_id, op, vault.user_id, path, sqlstate, message),
            )
        conn.executemany("DELETE FROM sync_outbox WHERE seq = ?", [(s,) for s in batch.seqs])


def _mark_synced(vault: "Vault", dry_run: bool) -> None:
    if dry_run:
        return
    from ..db import utc_now

    with vault.db.write() as conn:
        vault.db.set_meta(conn, f"last_sync:{vault.user_id}", utc_now())


# ------------------------------------------------------------------- files


class _Objects:
    """What the bucket holds under the user's folder, learnt fresh once per sync when there is much to check."""

    def __init__(self, bucket: Bucket, user_id: str, pending: int) -> None:
        self.bucket = bucket
        self.sizes: dict[str, int] | None = None
        if pending > LISTING_THRESHOLD:
            self.sizes = _retrying(lambda: bucket.listing(user_id), "listing the bucket")

    def has(self, key: str, size: int, sha256: str) -> bool:
        if self.sizes is not None:
            return self.sizes.get(key) == size
        found = _retrying(lambda: self.bucket.head(key), "checking the bucket")
        return found is not None and found.size == size and found.sha256 in (None, sha256)

    def remember(self, key: str, size: int) -> None:
        if self.sizes is not None:
            self.sizes[key] = size


def _upload_files(vault: "Vault", bucket: Bucket, known: _Objects, batch: _Batch, result: SyncReport,
                  progress: ProgressCallback | None, dry_run: bool) -> None:
    todo = []
    for row in batch.changes.library:
        local, sha, size, mime = batch.files[row["id"]]
        key = row["storage_path"]
        if not _own_key(key, vault.user_id):
            raise SyncError(f"library asset {row['id']} has the storage path {key!r}, outside the folder of user "
                            f"{vault.user_id}; nothing was sent (run 'localvault verify')")
        if known.has(key, size, sha):
            result.files_skipped += 1
        else:
            todo.append((Path(local), key, sha, size, mime))
    if not todo:
        return
    total = sum(t[3] for t in todo)
    report(progress, "upload", total=len(todo), bytes_total=total)
    if dry_run:
        result.files_uploaded += len(todo)
        result.bytes_uploaded += total
        return

    vanished: list[str] = []

    def send(item: tuple[Path, str, str, int, str]) -> int | None:
        local, key, sha, size, mime = item
        try:
            if not local.exists():
                raise FileNotFoundError(str(local))
            _retrying(lambda: bucket.upload(local, key, sha, size, mime), f"uploading {key}")
        except FileNotFoundError:
            vanished.append(key)  # deleted by another process since the batch was read? checked below
            return None
        known.remember(key, size)
        report(progress, "upload", advance=1, bytes_advance=size, total=len(todo), bytes_total=total)
        return size

    with ThreadPoolExecutor(max_workers=min(UPLOAD_WORKERS, len(todo))) as pool:
        for size in pool.map(send, todo):
            if size is not None:
                result.files_uploaded += 1
                result.bytes_uploaded += size
    if vanished:
        _drop_deleted_meanwhile(vault, batch, set(vanished))


def _drop_deleted_meanwhile(vault: "Vault", batch: _Batch, keys: set[str]) -> None:
    """Leave out of the batch the rows whose file vanished because the row itself was deleted meanwhile.

    The deleting transaction queued a newer outbox entry (a delete), which a
    later batch pushes; a row still present without its file is a real loss.
    """
    kept = []
    for row in batch.changes.library:
        if row["storage_path"] not in keys:
            kept.append(row)
            continue
        still = vault.db.conn.execute("SELECT 1 FROM user_library WHERE id = ?", (row["id"],)).fetchone()
        if still is not None:
            raise SyncError(f"the file of library asset {row['storage_path']} is missing locally; "
                            "run 'localvault verify --repair'")
        batch.files.pop(row["id"], None)
    batch.changes.library[:] = kept


def _own_key(key: str, user_id: str) -> bool:
    """Whether an object key lies in the user's own folder (``<user_id>/…``, no '..')."""
    parts = key.split("/")
    return len(parts) >= 2 and parts[0] == user_id and ".." not in parts and "" not in parts


def _delete_objects(bucket: Bucket, batch: _Batch, outcome: BatchResult, result: SyncReport, user_id: str) -> None:
    keys = []
    for row in batch.changes.library_deletes:
        if row["id"] in outcome.gone_library_ids:
            _op, path, _seq = batch.entries[("user_library", row["id"])]
            if path and _own_key(path, user_id):  # never another user's object, whatever the outbox says
                keys.append(path)
    bucket.delete(keys)
    result.objects_deleted += len(keys)


# ------------------------------------------------------------------ status


def status(vault: "Vault", remote: Remote | None = None, *, check_online: bool = True) -> SyncStatus:
    """Whether the remote answers, how many changes wait, which were refused, and the last sync."""
    rejected = [
        RejectedChange(*row)
        for row in vault.db.conn.execute(
            "SELECT table_name, row_id, op, sqlstate, message, rejected_at FROM sync_rejected WHERE user_id = ? ORDER BY seq",
            (vault.user_id,),
        )
    ]
    configured = remote or (remote_for(vault, None) if vault.config.remote else None)
    online, reason = False, "no remote is set"
    if configured is not None and check_online:
        try:
            configured.check()
            Bucket(configured.bucket_url, configured.storage_options).check_reachable()
            online, reason = True, None
        except (OfflineError, SyncError) as exc:
            online, reason = False, str(exc)
        finally:
            configured.close()
    return SyncStatus(
        online=online, offline_reason=reason, pending_changes=_pending_count(vault), rejected=rejected,
        last_sync=vault.db.get_meta(f"last_sync:{vault.user_id}"),
        remote=f"{_safe_dsn(configured.database_url)} + {configured.bucket_url}" if configured else None,
    )


def _safe_dsn(dsn: str) -> str:
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
        return f"postgresql://{parts.get('user', '')}@{parts.get('host', '')}:{parts.get('port', '5432')}/{parts.get('dbname', '')}"
    except Exception:
        return "postgresql://…"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
