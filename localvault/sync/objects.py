"""The bucket's side of a push: which files it holds, sending those it lacks, removing those of deleted rows."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SyncError
from ..progress import ProgressCallback, report
from . import outbox
from .batch import BatchResult
from .bucket import Bucket
from .local_reads import file_digest
from .remote import Remote
from .report import SyncReport
from .retry import RetryStopped, retrying

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..vault import Vault

UPLOAD_WORKERS = 16
#: With more files than this to check, one fresh listing beats a HEAD per file.
LISTING_THRESHOLD = 50


class Objects:
    """What the bucket holds under the user's folder, learnt fresh once per sync when there is much to check."""

    def __init__(self, bucket: Bucket, user_id: str, pending: int, *, list_all: bool = False) -> None:
        """``list_all``: list even with little to check (a full sync, whose rows' files the bucket may lack)."""
        self.bucket = bucket
        self.listed: dict[str, tuple[int, str | None]] | None = None
        self.sent: dict[str, int] = {}  # uploaded (and verified) by this sync
        if pending > LISTING_THRESHOLD or list_all:
            self.listed = retrying(lambda: bucket.objects(user_id), "listing the bucket")

    def has(self, key: str, size: int, sha256: str, local: Path, *, sent_before: bool = False,
            stop: threading.Event | None = None) -> bool:
        """Whether the bucket holds this very file: same size and the same bytes; when unsure, no (it is sent).

        From the listing: an S3 ETag that is an MD5 is compared with the local
        file's; otherwise a HEAD reads the sha256 the object carries, or, for
        an object without one (put there by another tool), its ETag if that is
        an MD5. A folder keeps no checksum: its object is hashed, unless
        ``sent_before`` (the row's insert was synced: a sync of ours sent and
        checked that object, and a library file never changes), so that an
        edit of a title or tags does not read the file back from a NAS.
        ``stop`` set ends a wait between retries (:class:`RetryStopped`).
        """
        if (size_sent := self.sent.get(key)) is not None:  # (one read: the push's other thread may pop it)
            return size_sent == size
        if self.listed is not None:
            size_and_md5 = self.listed.get(key)
            if size_and_md5 is None or size_and_md5[0] != size:
                return False
            if size_and_md5[1] is not None:
                return md5_of(local) == size_and_md5[1]
        if not self.bucket.is_s3 and not sent_before:
            return retrying(lambda: self.bucket.sha256_of(key, size), "checking the bucket", stop=stop) == sha256
        if not self.bucket.is_s3 and self.listed is not None:
            return True  # listed with this size, above
        found = retrying(lambda: self.bucket.head(key), "checking the bucket", stop=stop)
        if found is None or found.size != size:
            return False
        if not self.bucket.is_s3:
            return True
        if found.sha256 is not None:
            return found.sha256 == sha256
        return found.md5 is not None and md5_of(local) == found.md5

    def lacks(self, key: str, size: int) -> bool | None:
        """Whether the bucket lacks this object, from what the sync sent and listed (no request); None: unknown.
        Not a reason to skip a file (:meth:`has` decides that): it sizes batches (:func:`outbox.read_batch`)."""
        if (size_sent := self.sent.get(key)) is not None:
            return size_sent != size
        if self.listed is None:
            return None
        size_and_md5 = self.listed.get(key)
        return size_and_md5 is None or size_and_md5[0] != size

    def remember(self, key: str, size: int) -> None:
        self.sent[key] = size


def md5_of(local: Path) -> str | None:
    """The local file's MD5; None when it is gone (its asset deleted by another process meanwhile: the upload
    then finds it gone and leaves its row out, as for a file that vanishes just before its upload)."""
    try:
        return file_digest(local, "md5")
    except FileNotFoundError:
        return None


def check_files(vault: Vault, known: Objects, batch: outbox.Batch, skip: set[str] | None = None,
                stop: threading.Event | None = None) -> dict[str, bool]:
    """{library row id: whether the bucket already holds its file} for the batch's rows, but those in ``skip``
    and those whose storage path lies outside the user's folder (:func:`upload_files` refuses them).

    A push runs it for the next batch while the server writes this one's rows (knowing nothing yet of which
    rows the server keeps deleted); ``stop`` set, it returns at once with what it has."""
    present = {}
    for row in batch.changes.library:
        if (skip is not None and row["id"] in skip) or not own_key(row["storage_path"], vault.user_id):
            continue
        if stop is not None and stop.is_set():
            break
        local, sha, size, _mime = batch.files[row["id"]]
        present[row["id"]] = known.has(row["storage_path"], size, sha, Path(local),
                                       sent_before=row["id"] not in batch.inserted, stop=stop)
    return present


def upload_files(vault: Vault, bucket: Bucket, known: Objects, batch: outbox.Batch, result: SyncReport,
                 progress: ProgressCallback | None, dry_run: bool, skip: set[str],
                 present: dict[str, bool] | None = None) -> None:
    """Send the files of the batch's rows (but those in ``skip``) that the bucket lacks; ``present``: what
    :func:`check_files` found, if it ran already."""
    if present is None:
        present = check_files(vault, known, batch, skip)
    todo = []
    for row in batch.changes.library:
        if row["id"] in skip:
            continue
        key = row["storage_path"]
        if not own_key(key, vault.user_id):
            raise SyncError(f"library asset {row['id']} has the storage path {key!r}, outside the folder of user "
                            f"{vault.user_id}; nothing was sent (run 'localvault verify')")
        if present[row["id"]]:
            result.files_skipped += 1
        else:
            local, sha, size, mime = batch.files[row["id"]]
            todo.append((Path(local), key, sha, size, mime))
    _send(vault, bucket, known, batch, todo, result, progress, dry_run)


def _send(vault: Vault, bucket: Bucket, known: Objects, batch: outbox.Batch,
          todo: list[tuple[Path, str, str, int, str]], result: SyncReport, progress: ProgressCallback | None,
          dry_run: bool) -> None:
    """Upload ``todo`` (local path, key, sha256, size, mime type) in parallel; a file deleted meanwhile with its row
    leaves the row out of the batch (a row still there without its file stops the sync)."""
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
    # Set when the sends end early (a file failed for good, the store went offline, Ctrl-C): the files not started
    # are not sent (each would retry against a store that answers no more), retry waits end.
    stop = threading.Event()

    failed: list[Exception] = []  # the first failure, which stopped the others
    under_way: set[str] = set()  # the keys being sent now

    def send(item: tuple[Path, str, str, int, str]) -> int | None:
        try:
            return send_one(item)
        except RetryStopped:
            raise
        except Exception as exc:
            failed.append(exc)
            stop.set()
            raise

    def send_one(item: tuple[Path, str, str, int, str]) -> int | None:
        local, key, sha, size, mime = item
        parts: dict[int, int] = {}  # the parts the bar was told of, and their bytes (a big file's, as they go)

        def on_part(number: int, count: int) -> None:
            if number not in parts:  # (a part held from an attempt cut short is told of again: counted once)
                parts[number] = count
                report(progress, "upload", bytes_advance=count, total=files_total, bytes_total=bytes_total)

        try:
            if stop.is_set():
                raise RetryStopped("the sync stopped")
            if not local.exists():
                raise FileNotFoundError(str(local))
            under_way.add(key)
            retrying(lambda: bucket.upload(local, key, sha, size, mime, stop, on_part), f"uploading {local} as {key}",
                     stop=stop)
        except FileNotFoundError:
            if local.exists():  # the store's "no such bucket", not our file
                raise SyncError(f"the bucket {bucket.shown_url} could not take {key}: it no longer exists; create it or "
                                "fix 'localvault remote set'") from None
            vanished.append(key)  # deleted by another process since the batch was read? checked below
            return None
        finally:
            under_way.discard(key)
        known.remember(key, size)
        report(progress, "upload", advance=1, bytes_advance=size - sum(parts.values()), total=files_total,
               bytes_total=bytes_total)
        return size

    pool = ThreadPoolExecutor(max_workers=min(UPLOAD_WORKERS, len(todo)), thread_name_prefix="localvault-upload")
    try:
        for sent in pool.map(send, todo):
            if sent is not None:
                result.files_uploaded += 1
                result.bytes_uploaded += sent
    except RetryStopped:
        if failed:  # (met first in the files' order: the failure that stopped it is what to report)
            raise failed[0] from None
        raise
    except KeyboardInterrupt:
        if under_way:  # (said, or a Ctrl-C seems unheard while a part's send ends)
            log.warning("stopping: waiting for the %d upload(s) under way to end (at most a minute or two; what "
                        "they sent stays, for the next sync to go on from)", len(under_way))
        raise
    finally:
        stop.set()
        # Only the uploads under way are waited for (each ends at its store's answer or timeout), not the queue.
        pool.shutdown(wait=True, cancel_futures=True)
    if vanished:
        drop_deleted_meanwhile(vault, batch, set(vanished))


def drop_deleted_meanwhile(vault: Vault, batch: outbox.Batch, keys: set[str]) -> None:
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


def own_key(key: str, user_id: str) -> bool:
    """Whether an object key lies in the user's own folder (``<user_id>/…``, no '..')."""
    parts = key.split("/")
    return len(parts) >= 2 and parts[0] == user_id and ".." not in parts and "" not in parts


def delete_objects(remote: Remote, bucket: Bucket, batch: outbox.Batch, outcome: BatchResult, result: SyncReport,
                   user_id: str, known: Objects) -> dict[str, tuple[str, str]]:
    """Remove the objects of the rows this batch deleted that the server no longer has; {row id: (key, the store's
    reason)} of those the bucket refused to remove.

    Also those of rows the server kept deleted in this batch's transaction: sent by this sync for a row
    deleted on the web between the check before the upload and the upsert, or by one cut short before it
    could remove it. No row points at them (an object's key is its row's). (Not those the check before the
    upload found: another rig may have brought such a row back since.) Each goes only if its row is still
    gone once the server holds its deletion (:meth:`Remote.absent_held`): another rig may have brought it
    back since this batch's commit. Only those this sync sent are counted; the bucket refusing is logged.
    """
    rows: dict[str, str] = {}  # key → row id
    for row in batch.changes.library_deletes:  # (a delete that lost, or was refused, leaves its row: not absent)
        _op, path, _seq, _queued_at = batch.entries[("user_library", row["id"])]
        if path and own_key(path, user_id):  # never another user's object, whatever the outbox says
            rows[path] = row["id"]
    strays = {r["storage_path"]: r["id"] for r in batch.changes.library
              if r["id"] in outcome.kept_deleted_library_ids and own_key(r["storage_path"], user_id)}
    with remote.absent_held(user_id, [*rows.values(), *strays.values()]) as absent:
        doomed = [key for key, row_id in (*rows.items(), *strays.items()) if row_id in absent]
        refused = bucket.delete(doomed)
    for key in strays:
        if key in refused:
            log.warning("the bucket refused to delete %s, of a row the server keeps deleted: %s", key, refused[key])
        elif key in known.sent and key in doomed:
            result.objects_deleted += 1
        known.sent.pop(key, None)
    result.objects_deleted += len([key for key in doomed if key in rows and key not in refused])
    return {rows[key]: (key, reason) for key, reason in refused.items() if key in rows}


def restore_revived(vault: Vault, bucket: Bucket, known: Objects, batch: outbox.Batch, outcome: BatchResult,
                    result: SyncReport, progress: ProgressCallback | None) -> None:
    """After the batch's commit: send again the objects of rows it brought back that another sync removed
    meanwhile (see :func:`delete_objects`; the server made this batch wait for that removal to end): a fresh
    HEAD each, never the sync's listing or what it sent."""
    todo = []
    for row in batch.changes.library:
        if row["id"] in outcome.revived_library_ids:
            local, sha, size, mime = batch.files[row["id"]]
            found = retrying(partial(bucket.head, row["storage_path"]), "checking the bucket")
            if found is None or found.size != size:
                log.info("sending %s again: removed by another sync as this one brought its row back",
                         row["storage_path"])
                todo.append((Path(local), row["storage_path"], sha, size, mime))
    _send(vault, bucket, known, batch, todo, result, progress, dry_run=False)
