"""S3 multipart uploads: one file sent in parts, checked before it is completed. An upload an interruption cut
short is gone on with by the next attempt at its file; the others a sync left unfinished are aborted (their
parts are billed until then). Each upload is noted in the vault while under way (:mod:`.open_uploads`)."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import hashlib
import logging
import platform
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import OfflineError, SyncError
from .local_reads import check_sha256, reading
from .open_uploads import OpenUploads
from .retry import RetryStopped, is_connection_trouble, retrying

#: Bytes a part holds (in memory while it is sent, and copied once by aiohttp: BIG_UPLOADS of them at once).
STREAM_BLOCK = 8 * 1024 * 1024
#: Blocks this big or bigger are mapped from the system, and given back when freed (see give_big_blocks_back).
MAPPED_BLOCKS = 4 * 1024 * 1024

log = logging.getLogger(__name__)


def send_in_parts(fs: Any, notes: OpenUploads | None, local: Path, path: str, sha256: str, size: int,
                  content_type: str, stop: threading.Event, on_part: Callable[[int, int], None] | None = None) -> None:
    """A multipart upload, completed only once every byte read has matched the row's size and sha256.

    The file's content in question (damaged, changed, unreadable, gone) or the
    store refusing aborts the upload, so the store never completes an object
    from part of a file, nor from bytes other than the asset's. An
    interruption (the sync stopped or offline, Ctrl-C, a lost connection; a
    kill) leaves an upload that got parts to the store open, noted with the
    file's sha256: the next attempt at the file, in this sync or the next,
    goes on from the parts the store holds (see :func:`_resumable`). ``on_part(number, size)`` is told of each
    part the store holds, sent now or before (the same part again, after an attempt cut short).
    """
    bucket, name = path.split("/", 1)
    if stop.is_set():
        raise RetryStopped(f"sending {path}: the sync stopped")
    upload_id, held = _resumable(fs, notes, bucket, name, sha256) or (_created(fs, notes, bucket, name, sha256,
                                                                                content_type), {})
    upload = {"Bucket": bucket, "Key": name, "UploadId": upload_id}
    stored = bool(held)
    try:
        digest, sent = hashlib.sha256(), 0
        parts: list[dict[str, Any]] = []
        for number, chunk in enumerate(_chunks(local), start=1):
            if stop.is_set():
                raise RetryStopped(f"sending {path}: the sync stopped")
            digest.update(chunk)
            sent += len(chunk)
            md5 = hashlib.md5(chunk, usedforsecurity=False).digest()
            if held.get(number, ("", -1))[1:] == (md5.hex(), len(chunk)):  # sent by an earlier attempt
                parts.append({"PartNumber": number, "ETag": held[number][0]})
                if on_part is not None:
                    on_part(number, len(chunk))
                continue
            # Content-MD5: the store checks each part itself. (Its ETag is not always the part's MD5:
            # SSE-KMS and SSE-C buckets answer with another value, so it cannot be compared here.)
            # A part that fails for a moment is sent again by itself (the part is in memory), not the whole
            # file from its first byte: botocore makes only two attempts (s3_client.BOTOCORE_ATTEMPTS).
            with _gone_meanwhile(path):
                answer = retrying(partial(fs.call_s3, "upload_part", PartNumber=number, Body=chunk,
                                          ContentMD5=base64.b64encode(md5).decode(), **upload),
                                  f"sending part {number} of {path}", stop=stop)
            stored = True
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            if on_part is not None:
                on_part(number, len(chunk))
        if sent != size:
            raise SyncError(f"{local} changed size while syncing; run 'localvault verify'")
        check_sha256(local, digest.hexdigest(), sha256)
        with _gone_meanwhile(path):
            fs.call_s3("complete_multipart_upload", MultipartUpload={"Parts": parts}, **upload)
    except BaseException as exc:
        if notes is not None and stored and _interrupted(exc):
            log.info("the upload of %s stays open, for the next attempt to go on from its parts: %s", path, exc)
            raise
        with contextlib.suppress(Exception):  # the store unreachable now: the note stays, for the next sync
            fs.call_s3("abort_multipart_upload", **upload)
            _closed(notes, upload_id)
        raise
    _closed(notes, upload_id)


class UploadGone(OfflineError):
    """The store no longer has the upload (NoSuchUpload: a lifecycle rule, or a copy of this vault tidying up,
    aborted it meanwhile): retried as connection trouble is, the next attempt at the file makes a new one (the
    note of this one is dropped by :func:`_resumable`, which finds it gone)."""


@contextlib.contextmanager
def _gone_meanwhile(path: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:  # (s3fs's NoSuchUpload; a bucket gone too: the next attempt's creation says so)
        raise UploadGone(f"the multipart upload of {path} was aborted meanwhile; it is sent again") from None


def _created(fs: Any, notes: OpenUploads | None, bucket: str, name: str, sha256: str, content_type: str) -> str:
    """A new multipart upload's id, noted (before it is asked for, then with its id) in ``notes``."""
    intent = notes.creating(bucket, name) if notes is not None else None
    started = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=name, ContentType=content_type,
                         Metadata={"sha256": sha256})  # (its answer lost: the intent stays noted)
    if notes is not None:
        # An answer botocore had to ask for again may be the second upload the store made: the intent stays.
        retried = started.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0
        notes.opened(bucket, name, started["UploadId"], None if retried else intent, sha256)
    return str(started["UploadId"])


def _resumable(fs: Any, notes: OpenUploads | None, bucket: str, name: str,
               sha256: str) -> tuple[str, dict[int, tuple[str, str, int]]] | None:
    """An upload of this very file (same key and sha256) an interrupted attempt left open, and the parts the store
    holds of it: ``{number: (ETag, MD5 hex, size)}``. A part whose ETag is not its MD5 (SSE-KMS) is sent again.
    None if there is none, or if the store will not list its parts (``s3:ListMultipartUploadParts`` not granted):
    that upload is aborted, and the file sent whole. A lost connection is raised: the attempt is retried."""
    for upload_id in notes.resumable(bucket, name, sha256) if notes is not None else ():
        assert notes is not None
        try:
            held = _parts_held(fs, bucket, name, upload_id)
        except FileNotFoundError:  # (NoSuchUpload: aborted, expired or completed meanwhile)
            notes.closed(upload_id)
            continue
        except Exception as exc:
            if is_connection_trouble(exc):
                raise
            log.info("could not list the parts of an upload of %s left open (%s); sending it whole", name, exc)
            with contextlib.suppress(Exception):  # (else it stays noted, for the sync's end to abort)
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=name, UploadId=upload_id)
                notes.closed(upload_id)
            continue
        log.info("going on with an upload of %s left open: %d parts held", name, len(held))
        return upload_id, held
    return None


def _parts_held(fs: Any, bucket: str, name: str, upload_id: str) -> dict[int, tuple[str, str, int]]:
    """The parts the store holds of an upload (ListParts, a page at a time: s3fs has no paginators)."""
    held: dict[int, tuple[str, str, int]] = {}
    marker = 0
    while True:
        page = fs.call_s3("list_parts", Bucket=bucket, Key=name, UploadId=upload_id, PartNumberMarker=marker)
        for part in page.get("Parts", []):
            etag = str(part["ETag"])
            held[int(part["PartNumber"])] = (etag, etag.strip('"').lower(), int(part["Size"]))
        if not page.get("IsTruncated"):
            return held
        marker = int(page["NextPartNumberMarker"])


def _interrupted(exc: BaseException) -> bool:
    """Whether an upload failed for want of time or a connection (worth going on with), not for its content."""
    return isinstance(exc, (RetryStopped, OfflineError, KeyboardInterrupt, SystemExit)) or is_connection_trouble(exc)


def abort_left(fs: Any, notes: OpenUploads | None, *, resumable_too: bool = True) -> None:
    """Abort the multipart uploads ``notes`` still names (a sync killed outright left them); one the store
    cannot abort now stays noted for the next sync. ``resumable_too=False`` (a sync's start) keeps those
    an interruption left to go on with (:func:`send_in_parts`): the sync's end aborts any it did not finish."""
    if notes is None:
        return
    kept = set() if resumable_too else notes.going_on()
    for bucket, key, upload_id in notes.left():
        if upload_id in kept:
            continue
        try:
            if not upload_id:  # its creation's answer never came: the store's unfinished uploads of the key
                _abort_unnamed(fs, notes, bucket, key, sparing=kept)
                continue
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        except FileNotFoundError:  # (NoSuchUpload: aborted or completed already)
            pass
        except Exception:  # unreachable now, or refused: tried again by the next sync
            continue
        _closed(notes, upload_id)


def _abort_unnamed(fs: Any, notes: OpenUploads, bucket: str, key: str, sparing: set[str]) -> None:
    """Abort the store's unfinished uploads of ``key`` but those in ``sparing``; drop the note of the intent."""
    try:
        listed = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key).get("Uploads", [])
    except (PermissionError, NotImplementedError, AttributeError) as exc:  # never will: not noted for ever
        log.warning("could not list the unfinished uploads of %s to abort one a lost answer left (%s); a "
                    "lifecycle rule (AbortIncompleteMultipartUpload) removes it", key, exc)
        listed = []
    for upload in listed:
        if upload["Key"] == key and upload["UploadId"] not in sparing:
            with contextlib.suppress(FileNotFoundError):
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload["UploadId"])
    notes.dropped([bucket, key, ""])


def _closed(notes: OpenUploads | None, upload_id: str) -> None:
    if notes is not None:
        notes.closed(upload_id)


@functools.cache
def give_big_blocks_back() -> None:
    """Have glibc map blocks of MAPPED_BLOCKS and more, and unmap them when freed, for the rest of the process.

    Its threshold for that moves up to the size of a mapped block once one is freed, so later parts (and small
    files sent whole) came from the heap, which keeps what is freed: a sync of four 0.5-1 GiB files peaked at
    361 MiB of RSS with 161 MiB in use (a large-file journey). Elsewhere than glibc, nothing is done."""
    if platform.libc_ver()[0] != "glibc":
        return
    try:
        ctypes.CDLL(None).mallopt(-3, MAPPED_BLOCKS)  # M_MMAP_THRESHOLD (fixed from then on)
    except (OSError, AttributeError):
        log.debug("mallopt is not available", exc_info=True)


def _chunks(local: Path) -> Iterator[bytes]:
    """The file's bytes, STREAM_BLOCK at a time; only its own reads are checked by :func:`.local_reads.reading`."""
    with reading(local), open(local, "rb") as reader:
        while chunk := reader.read(STREAM_BLOCK):
            yield chunk
