"""The push loop (DESIGN.md §4): read the outbox, upload files, write rows, acknowledge.

Outbox rows are removed only after the server has committed the batch (and
the objects of deleted rows are gone), so a crash anywhere means the next run
resends the batch; upserts are idempotent and last-writer-wins, so the end
state is the same.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import psycopg

from ..errors import InvalidInputError, OfflineError, SyncBusyError, SyncError, first_line
from ..progress import ProgressCallback, report
from . import outbox
from .bucket import Bucket, file_digest
from .remote import BatchResult, Remote
from .store_errors import SETTINGS_HINT, network_errors, settings_errors, store_refusal

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..vault import Vault

BATCH_ROWS = 5_000
UPLOAD_WORKERS = 16
#: The ``sqlstate`` of a refused change that the bucket, not PostgreSQL, refused (a delete of its object).
REFUSED_BY_BUCKET = "bucket"
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
    #: Changes the server kept its own newer state against: a row edited, or deleted, there after the change.
    conflicts: int = 0
    rejected: int = 0
    batches: int = 0
    pending_changes: int = 0  # queued when the sync began (status counts those left)
    seconds: float = 0.0


def remote_for(vault: Vault, remote: Remote | None) -> Remote:
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

    def __enter__(self) -> _SyncLock:
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


#: Connection trouble: retried with backoff, then reported as offline (with the store's own, see network_errors).
_RETRYABLE: tuple[type[BaseException], ...] = (psycopg.OperationalError, OfflineError, OSError)


def _retrying(action: Callable[[], T], what: str, on_retry: Callable[[], None] | None = None) -> T:
    """Run ``action``, retrying connection trouble with backoff; OfflineError when it persists."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return action()
        except Exception as exc:
            if isinstance(exc, settings_errors()):  # credentials or AWS settings: no retry helps
                raise SyncError(f"{what}: {first_line(exc)}; {SETTINGS_HINT}") from None
            if not isinstance(exc, (*_RETRYABLE, *network_errors())):
                raise
            if isinstance(exc, PermissionError):  # retrying cannot help
                if exc.filename and os.path.exists(exc.filename):  # a local file we may not read
                    raise SyncError(f"{what}: cannot read {exc.filename} ({exc.strerror}); "
                                    "check its permissions") from None
                raise SyncError(f"{what}: access denied ({first_line(exc)}); check the keys and the bucket's "
                                "policies") from None
            if isinstance(exc, FileNotFoundError):
                raise
            if (reason := store_refusal(exc)) is not None:
                raise SyncError(f"{what}: the bucket refused ({reason}); retrying will not help: fix what it names "
                                "(the bucket's limits, such as the largest file it takes, or its settings; a full "
                                "or read-only disk), or delete the asset, then sync again") from None
            if delay is None:
                raise OfflineError(f"{what} failed after {len(RETRY_DELAYS) + 1} attempts: {first_line(exc)}") from None
            if on_retry:
                on_retry()
            time.sleep(delay)
    raise AssertionError("unreachable")


def push(vault: Vault, remote: Remote | None = None, *, dry_run: bool = False, retry_rejected: bool = False,
         full: bool = False, progress: ProgressCallback | None = None, batch_rows: int = BATCH_ROWS) -> SyncReport:
    """Push the vault user's library and collections to the remote.

    ``full`` sends every row again, not only those changed since the last
    sync (after restoring the vault from a backup, or when the server lost
    rows): rows newer on the server are kept, objects the bucket holds are
    not sent again.

    Raises OfflineError when the server or bucket cannot be reached (nothing
    is lost: the outbox keeps every change), SchemaVersionError when the
    server's schema differs, SyncBusyError when another sync runs.
    """
    started = time.monotonic()
    target = remote_for(vault, remote)
    result = SyncReport(dry_run=dry_run)
    with _SyncLock(vault.root), _closing(target if remote is None else None):
        target.check(vault.user_id)
        if retry_rejected and not dry_run:
            outbox.requeue_rejected(vault)
        # Checked even with nothing to push: a sync that "succeeds" against a bucket that is gone hides it.
        bucket = Bucket(target.bucket_url, target.storage_options)
        bucket.check_reachable(create=not dry_run)  # at the start, offline is said at once (as for PostgreSQL)
        if full and not dry_run:
            outbox.queue_everything(vault)
        preview = {"with_rejected": retry_rejected and dry_run,  # counted as if requeued, or queued
                   "with_everything": full and dry_run}
        result.pending_changes = outbox.pending_count(vault, **preview)
        if result.pending_changes == 0:
            outbox.mark_synced(vault, dry_run)
            result.seconds = time.monotonic() - started
            return result
        known = _Objects(bucket, vault.user_id, result.pending_changes)
        report(progress, "rows", total=result.pending_changes)
        after_seq = 0
        taken: set[int] = set()  # a dry run acknowledges nothing: entries it has counted, past after_seq
        counted: set[str] = set()  # ... and counts each row once, though a row may go in two batches
        while True:
            batch = outbox.read_batch(vault, batch_rows, after_seq, skip=taken, **preview)
            if batch is None:
                break
            # Rows the server keeps deleted are skipped by the push (deleted on the web after their last local edit):
            # their files are not sent, nor checked.
            kept_deleted = _retrying(partial(target.kept_deleted, vault.user_id, batch.changes.library),
                                     "reading the server's deletions", target.close)
            _upload_files(vault, bucket, known, batch, result, progress, dry_run, skip=kept_deleted)
            if dry_run:
                after_seq = batch.last_seq
                taken = {seq for seq in (*taken, *batch.seqs) if seq > after_seq}
                written = {r["id"] for r in (*batch.changes.collections, *batch.changes.library)} - counted
                deleted = {r["id"] for r in (*batch.changes.library_deletes, *batch.changes.collection_deletes)}
                result.rows_written += len(written - kept_deleted)
                result.conflicts += len(written & kept_deleted)
                result.rows_deleted += len(deleted - counted)
                counted |= written | deleted
                continue
            outcome = _retrying(partial(target.apply, vault.user_id, batch.changes), "writing rows to PostgreSQL",
                                target.close)
            refused = _retrying(partial(_delete_objects, bucket, batch, outcome, result, vault.user_id, known),
                                "deleting objects from the bucket")
            for row_id, (key, reason) in refused.items():  # set aside as a refused change: status lists it
                outcome.rejected[("user_library", row_id)] = (
                    REFUSED_BY_BUCKET, f"the bucket refused to delete {key} ({reason}); check its policies, then "
                                       "'localvault sync --retry-rejected'")
            # Entries of a collection this batch brought back that the server holds outside it (released when
            # it was deleted there): sent again (queued with the acknowledgement), they rejoin it.
            released = _retrying(partial(target.released, vault.user_id,
                                         outbox.entries_in(vault, outcome.revived_collection_ids)),
                                 "reading the server's collections", target.close)
            outbox.acknowledge(vault, batch, outcome, send_again=released)
            result.batches += 1
            result.rows_written += outcome.written
            result.rows_deleted += outcome.deleted
            result.conflicts += outcome.conflicts
            result.rejected += len(outcome.rejected)
            report(progress, "rows", advance=len(batch.keys), total=result.pending_changes)
        outbox.mark_synced(vault, dry_run)
    result.seconds = time.monotonic() - started
    return result


# ------------------------------------------------------------------- files


class _Objects:
    """What the bucket holds under the user's folder, learnt fresh once per sync when there is much to check."""

    def __init__(self, bucket: Bucket, user_id: str, pending: int) -> None:
        self.bucket = bucket
        self.listed: dict[str, tuple[int, str | None]] | None = None
        self.sent: dict[str, int] = {}  # uploaded (and verified) by this sync
        if pending > LISTING_THRESHOLD:
            self.listed = _retrying(lambda: bucket.objects(user_id), "listing the bucket")

    def has(self, key: str, size: int, sha256: str, local: Path, *, sent_before: bool = False) -> bool:
        """Whether the bucket holds this very file: same size and the same bytes; when unsure, no (it is sent).

        From the listing: an S3 ETag that is an MD5 is compared with the local
        file's; otherwise a HEAD reads the sha256 the object carries, or, for
        an object without one (put there by another tool), its ETag if that is
        an MD5. A folder keeps no checksum: its object is hashed, unless
        ``sent_before`` (the row's insert was synced: a sync of ours sent and
        checked that object, and a library file never changes), so that an
        edit of a title or tags does not read the file back from a NAS.
        """
        if key in self.sent:
            return self.sent[key] == size
        if self.listed is not None:
            size_and_md5 = self.listed.get(key)
            if size_and_md5 is None or size_and_md5[0] != size:
                return False
            if size_and_md5[1] is not None:
                return _md5_of(local) == size_and_md5[1]
        if not self.bucket.is_s3 and not sent_before:
            return _retrying(lambda: self.bucket.sha256_of(key, size), "checking the bucket") == sha256
        if not self.bucket.is_s3 and self.listed is not None:
            return True  # listed with this size, above
        found = _retrying(lambda: self.bucket.head(key), "checking the bucket")
        if found is None or found.size != size:
            return False
        if not self.bucket.is_s3:
            return True
        if found.sha256 is not None:
            return found.sha256 == sha256
        return found.md5 is not None and _md5_of(local) == found.md5

    def remember(self, key: str, size: int) -> None:
        self.sent[key] = size


def _md5_of(local: Path) -> str | None:
    """The local file's MD5; None when it is gone (its asset deleted by another process meanwhile: the upload
    then finds it gone and leaves its row out, as for a file that vanishes just before its upload)."""
    try:
        return file_digest(local, "md5")
    except FileNotFoundError:
        return None


def _upload_files(vault: Vault, bucket: Bucket, known: _Objects, batch: outbox.Batch, result: SyncReport,
                  progress: ProgressCallback | None, dry_run: bool, skip: set[str]) -> None:
    todo = []
    for row in batch.changes.library:
        if row["id"] in skip:
            continue
        local, sha, size, mime = batch.files[row["id"]]
        key = row["storage_path"]
        if not _own_key(key, vault.user_id):
            raise SyncError(f"library asset {row['id']} has the storage path {key!r}, outside the folder of user "
                            f"{vault.user_id}; nothing was sent (run 'localvault verify')")
        if known.has(key, size, sha, Path(local), sent_before=row["id"] not in batch.inserted):
            result.files_skipped += 1
        else:
            todo.append((Path(local), key, sha, size, mime))
    if not todo:
        return
    total = sum(t[3] for t in todo)
    # Totals over the whole sync, not this batch: the bar keeps counting from one batch to the next.
    files_total, bytes_total = result.files_uploaded + len(todo), result.bytes_uploaded + total
    report(progress, "upload", total=files_total, bytes_total=bytes_total)
    if dry_run:
        result.files_uploaded += len(todo)
        result.bytes_uploaded += total
        for _local, key, _sha, size, _mime in todo:  # a later batch then finds it sent, as in a push
            known.remember(key, size)
        return

    vanished: list[str] = []

    def send(item: tuple[Path, str, str, int, str]) -> int | None:
        local, key, sha, size, mime = item
        try:
            if not local.exists():
                raise FileNotFoundError(str(local))
            _retrying(lambda: bucket.upload(local, key, sha, size, mime), f"uploading {local} as {key}")
        except FileNotFoundError:
            if local.exists():  # the store's "no such bucket", not our file
                raise SyncError(f"the bucket {bucket.shown_url} could not take {key}: it no longer exists; create it or "
                                "fix 'localvault remote set'") from None
            vanished.append(key)  # deleted by another process since the batch was read? checked below
            return None
        known.remember(key, size)
        report(progress, "upload", advance=1, bytes_advance=size, total=files_total, bytes_total=bytes_total)
        return size

    with ThreadPoolExecutor(max_workers=min(UPLOAD_WORKERS, len(todo))) as pool:
        for sent in pool.map(send, todo):
            if sent is not None:
                result.files_uploaded += 1
                result.bytes_uploaded += sent
    if vanished:
        _drop_deleted_meanwhile(vault, batch, set(vanished))


def _drop_deleted_meanwhile(vault: Vault, batch: outbox.Batch, keys: set[str]) -> None:
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
            raise SyncError(f"the file of library asset {row['storage_path']} is missing locally; run "
                            "'localvault verify' (--repair restores it if an identical copy is in the vault; else "
                            "put the file back or delete the asset)")
        batch.files.pop(row["id"], None)
    batch.changes.library[:] = kept


def _own_key(key: str, user_id: str) -> bool:
    """Whether an object key lies in the user's own folder (``<user_id>/…``, no '..')."""
    parts = key.split("/")
    return len(parts) >= 2 and parts[0] == user_id and ".." not in parts and "" not in parts


def _delete_objects(bucket: Bucket, batch: outbox.Batch, outcome: BatchResult, result: SyncReport,
                    user_id: str, known: _Objects) -> dict[str, tuple[str, str]]:
    """Remove the objects of the rows the server no longer has; {row id: (key, the store's reason)} of those the
    bucket refused to remove.

    Also those of rows the server kept deleted in this batch's transaction: sent by this sync for a row
    deleted on the web between the check before the upload and the upsert, or by one cut short before it
    could remove it. No row points at them (an object's key is its row's). (Not those the check before the
    upload found: another rig may have brought such a row back since.) Only those this sync sent are
    counted; the bucket refusing is logged.
    """
    rows: dict[str, str] = {}  # key → row id
    for row in batch.changes.library_deletes:
        if row["id"] in outcome.gone_library_ids:
            _op, path, _seq, _queued_at = batch.entries[("user_library", row["id"])]
            if path and _own_key(path, user_id):  # never another user's object, whatever the outbox says
                rows[path] = row["id"]
    strays = [r["storage_path"] for r in batch.changes.library
              if r["id"] in outcome.kept_deleted_library_ids and _own_key(r["storage_path"], user_id)]
    refused = bucket.delete([*rows, *strays])
    for key in strays:
        if key in refused:
            log.warning("the bucket refused to delete %s, of a row the server keeps deleted: %s", key, refused[key])
        elif key in known.sent:
            result.objects_deleted += 1
        known.sent.pop(key, None)
    result.objects_deleted += len(rows) - len([key for key in refused if key in rows])
    return {rows[key]: (key, reason) for key, reason in refused.items() if key in rows}
