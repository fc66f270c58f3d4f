"""The push loop (DESIGN.md §4): read the outbox, upload files, write rows, acknowledge.

Outbox rows are removed only after the server has committed the batch (and
the objects of deleted rows are gone), so a crash anywhere means the next run
resends the batch; upserts are idempotent and last-writer-wins, so the end
state is the same.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from .._sqlite_errors import function_raising_vault_errors
from ..config import remote_identity
from ..errors import InvalidInputError, OfflineError, StorageError, SyncBusyError, VaultCorruptError
from ..models import check_callback, check_flag, check_whole_number
from ..progress import ProgressCallback, report
from . import outbox
from .bucket import Bucket
from .objects import Objects, check_files, delete_objects, restore_revived, upload_files
from .open_uploads import OpenUploads
from .remote import Remote
from .report import SyncReport, name_conflicts
from .retry import retrying

if TYPE_CHECKING:
    from ..vault import Vault

__all__ = ["BATCH_ROWS", "INVALID_ID", "REFUSED_BY_BUCKET", "SyncReport", "push", "remote_for"]

BATCH_ROWS = 5_000
#: The most rows a batch may hold (``push(batch_rows=…)``): one batch is read and held in memory.
MAX_BATCH_ROWS = 100_000
#: The ``sqlstate`` of a refused change that the bucket, not PostgreSQL, refused (a delete of its object).
REFUSED_BY_BUCKET = "bucket"
#: The ``sqlstate`` of a refused change whose row id is no UUID (a vault.db edited by hand): never sent.
INVALID_ID = "invalid id"


def remote_for(vault: Vault, remote: Remote | None) -> Remote:
    if remote is not None:
        if not isinstance(remote, Remote):
            raise InvalidInputError(f"remote must be a localvault.sync.Remote (or None: the vault's own), not "
                                    f"{type(remote).__name__}; make one with Remote(database_url, bucket_url)")
        return remote
    if vault.config.remote is None and vault.config.remote_problem is not None:
        raise VaultCorruptError(vault.config.remote_problem)
    if vault.config.remote is None:
        raise InvalidInputError("no remote is set; run 'localvault remote set --database-url … --bucket …' first")
    return Remote.from_stored(vault.config.remote)


class _SyncLock:
    """One sync per vault at a time (an flock on .sync.lock; released by the OS if we die)."""

    def __init__(self, root: Path) -> None:
        self.path = root / ".sync.lock"
        self.fd: int | None = None

    def __enter__(self) -> _SyncLock:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open {self.path}, which keeps two syncs of this vault apart: "
                               f"{exc.strerror or exc}; check that the vault folder is yours to write") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise SyncBusyError("another sync of this vault is running; wait for it to finish") from None
        except OSError as exc:  # ENOLCK on some network filesystems
            os.close(self.fd)
            raise StorageError(f"cannot lock {self.path}: {exc.strerror or exc}; keep the vault on a local "
                               "filesystem that supports locks") from None
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



@function_raising_vault_errors("db")
def push(vault: Vault, remote: Remote | None = None, *, dry_run: bool = False, retry_rejected: bool = False,
         full: bool = False, progress: ProgressCallback | None = None, batch_rows: int = BATCH_ROWS) -> SyncReport:
    """Push the vault user's library and collections to the remote.

    ``full`` sends every row again, not only those changed since the last
    sync (after restoring the vault from a backup, or when the server lost
    rows): rows newer on the server are kept, objects the bucket holds are
    not sent again. A sync to another remote than the last one (another
    database or bucket) is a full one by itself.

    Raises OfflineError when the server or bucket cannot be reached (nothing
    is lost: the outbox keeps every change), SchemaVersionError when the
    server's schema differs, SyncBusyError when another sync runs.
    """
    started = time.monotonic()
    for flag, name in ((dry_run, "dry_run"), (retry_rejected, "retry_rejected"), (full, "full")):
        check_flag(flag, name)
    check_callback(progress, "progress")
    batch_rows = check_whole_number(batch_rows, "batch_rows", 1, MAX_BATCH_ROWS)
    vault.db.refuse_if_closed()  # (not an OfflineError from the server, met first)
    if not dry_run:  # a read-only vault could not acknowledge: every sync would send the same rows again
        vault.db.refuse_if_readonly("sync it (or sync with dry_run=True to see what would go)")
    target = remote_for(vault, remote)
    result = SyncReport(dry_run=dry_run)
    with _said_offline(), _SyncLock(vault.root), _closing(target if remote is None else None), ExitStack() as stack:
        target.check(vault.user_id)
        result.clock_offset_seconds = target.clock_offset
        where = remote_identity(target)
        if outbox.remote_changed(vault, where):  # a new server and bucket: everything goes, as --full sends it
            full = result.remote_changed = True
        if retry_rejected and not dry_run:
            outbox.requeue_rejected(vault)
        # Checked even with nothing to push: a sync that "succeeds" against a bucket that is gone hides it.
        bucket = Bucket(target.bucket_url, target.storage_options)
        stack.callback(bucket.close)
        bucket.check_reachable(create=not dry_run)  # at the start, offline is said at once (as for PostgreSQL)
        if not dry_run:
            bucket.open_uploads = OpenUploads(vault.db)
            bucket.abort_left(resumable_too=False)  # what a sync killed outright left (and cannot go on with)
        if full and not dry_run:
            outbox.queue_everything(vault)
        preview = {"with_rejected": retry_rejected and dry_run,  # counted as if requeued, or queued
                   "with_everything": full and dry_run}
        result.pending_changes = outbox.pending_count(vault, **preview)
        if result.pending_changes == 0:
            outbox.mark_synced(vault, dry_run, where)
            if not dry_run:
                _tidy_up(bucket)
            result.seconds = time.monotonic() - started
            return result
        known = Objects(bucket, vault.user_id, result.pending_changes, list_all=full)
        report(progress, "rows", total=result.pending_changes)
        after_seq = 0
        taken: set[int] = set()  # entries a batch took past its last_seq (deletes, collections): not read again
        counted: set[str] = set()  # a dry run counts each row once, though a row may go in two batches
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="localvault-read-ahead")
        stop = threading.Event()  # an error or Ctrl-C here does not wait for the read ahead to finish its checks
        try:
            upcoming: Future[tuple[outbox.Batch | None, dict[str, bool] | None]] | None = None
            while True:
                batch, present = upcoming.result() if upcoming is not None else (None, None)
                if batch is None:  # (read again when the read ahead found nothing: the last acknowledgement may
                    # have queued entries to send again, and other processes queue theirs)
                    batch = outbox.read_batch(vault, batch_rows, after_seq, skip=taken, bucket_lacks=known.lacks,
                                              **preview)
                    present = None
                if batch is None:
                    break
                after_seq = batch.last_seq
                taken = {seq for seq in (*taken, *batch.seqs) if seq > after_seq}
                # Rows the server keeps deleted are skipped by the push (deleted on the web after their last local
                # edit): their files are not sent.
                kept_deleted = retrying(partial(target.kept_deleted, vault.user_id, batch.changes.library),
                                        "reading the server's deletions", target.close)
                upload_files(vault, bucket, known, batch, result, progress, dry_run, skip=kept_deleted,
                             present=present)
                if dry_run:
                    _count_dry_run(result, batch, kept_deleted, counted)
                    continue
                # While the server writes this batch, the next one is read and its files checked (a thread with
                # its own SQLite connection): the client's share of a batch overlaps the server's.
                upcoming = ahead.submit(_read_ahead, vault, known, batch_rows, after_seq, set(taken), stop)
                _write_batch(vault, target, bucket, known, batch, result, progress)
        finally:
            stop.set()
            # An idle read ahead (the sync done) ends now, and its SQLite connection with it: a copy of the vault
            # made right after the sync saw its -wal and -shm files go. A busy one (an error) is not waited for.
            ahead.shutdown(wait=upcoming is None or upcoming.done(), cancel_futures=True)
        outbox.mark_synced(vault, dry_run, where)
        if not dry_run:
            _tidy_up(bucket)
    result.seconds = time.monotonic() - started
    return result


def _tidy_up(bucket: Bucket) -> None:
    """At a sync's end, every file sent: a folder bucket's stale temporary files removed, and the multipart uploads
    still noted aborted (one whose creation's answer was lost, then made again; one left open for a file no longer
    to be sent). What cannot be done now, the next sync does."""
    bucket.remove_stale_temps()
    with suppress(Exception):
        bucket.abort_left()


@contextmanager
def _said_offline() -> Iterator[None]:
    """An OfflineError that also says what to do about it."""
    try:
        yield
    except OfflineError as exc:  # (its type, cause and traceback kept)
        exc.args = (f"{exc}; nothing was lost: sync again once it can be reached (the next sync goes on from "
                    "where this one stopped)", *exc.args[1:])
        raise


def _read_ahead(vault: Vault, known: Objects, batch_rows: int, after_seq: int, skip: set[int],
                stop: threading.Event) -> tuple[outbox.Batch | None, dict[str, bool] | None]:
    """The next batch, and which of its files the bucket holds (see :func:`push`)."""
    batch = outbox.read_batch(vault, batch_rows, after_seq, skip=skip, bucket_lacks=known.lacks)
    return batch, (None if batch is None else check_files(vault, known, batch, stop=stop))


def _write_batch(vault: Vault, target: Remote, bucket: Bucket, known: Objects, batch: outbox.Batch,
                 result: SyncReport, progress: ProgressCallback | None) -> None:
    """Write a batch's rows (its files are in the bucket), remove its deleted rows' objects, acknowledge it."""
    outcome = retrying(partial(target.apply, vault.user_id, batch.changes), "writing rows to PostgreSQL",
                       target.close)
    restore_revived(vault, bucket, known, batch, outcome, result, progress)
    refused = retrying(partial(delete_objects, target, bucket, batch, outcome, result, vault.user_id, known),
                       "deleting objects from the bucket", target.close)
    outcome.rejected.update({key: (INVALID_ID, why) for key, why in batch.invalid.items()})
    for row_id, (key, reason) in refused.items():  # set aside as a refused change: status lists it
        outcome.rejected[("user_library", row_id)] = (
            REFUSED_BY_BUCKET, f"the bucket refused to delete {key} ({reason}); check its policies, then "
                               "'localvault sync --retry-rejected'")
    # Entries of a collection this batch brought back that the server holds outside it (released when it was
    # deleted there): sent again (queued with the acknowledgement), they rejoin it.
    released = retrying(partial(target.released, vault.user_id,
                                outbox.entries_in(vault, outcome.revived_collection_ids)),
                        "reading the server's collections", target.close)
    outbox.acknowledge(vault, batch, outcome, send_again=released)
    result.batches += 1
    result.rows_written += outcome.written
    result.rows_deleted += outcome.deleted
    name_conflicts(result, outcome.conflicted)
    result.rejected += len(outcome.rejected)
    report(progress, "rows", advance=len(batch.keys), total=result.pending_changes)


def _count_dry_run(result: SyncReport, batch: outbox.Batch, kept_deleted: set[str], counted: set[str]) -> None:
    """What a dry run reports of a batch: each row counted once over the whole run (``counted``)."""
    written = {r["id"] for r in (*batch.changes.collections, *batch.changes.library)} - counted
    deleted = {r["id"] for r in (*batch.changes.library_deletes, *batch.changes.collection_deletes)}
    result.rows_written += len(written - kept_deleted)
    kept = written & kept_deleted
    name_conflicts(result, [(table, row["id"]) for table, rows in (("user_collections", batch.changes.collections),
                                                                   ("user_library", batch.changes.library))
                            for row in rows if row["id"] in kept])
    result.rows_deleted += len(deleted - counted)
    result.rejected += len(batch.invalid)
    counted |= written | deleted
