"""S3 multipart uploads: one file sent in parts, checked before it is completed, and the uploads a sync left
unfinished aborted (their parts are billed until then). Each upload is noted in the vault while under way
(:mod:`.open_uploads`)."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import hashlib
import logging
import platform
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import SyncError
from .local_reads import check_sha256, reading
from .open_uploads import OpenUploads
from .retry import RetryStopped, retrying

#: Bytes a part holds (in memory while it is sent, and copied once by aiohttp: BIG_UPLOADS of them at once).
STREAM_BLOCK = 8 * 1024 * 1024
#: Blocks this big or bigger are mapped from the system, and given back when freed (see give_big_blocks_back).
MAPPED_BLOCKS = 4 * 1024 * 1024

log = logging.getLogger(__name__)


def send_in_parts(fs: Any, notes: OpenUploads | None, local: Path, path: str, sha256: str, size: int,
                  content_type: str, stop: threading.Event) -> None:
    """A multipart upload, completed only once every byte read has matched the row's size and sha256.

    Anything else (the file damaged, a read or network error, a part the
    store found damaged) aborts it, so the store never completes an object
    from part of a file, nor from bytes other than the asset's.
    """
    bucket, name = path.split("/", 1)
    if stop.is_set():
        raise RetryStopped(f"sending {path}: the sync stopped")
    intent = notes.creating(bucket, name) if notes is not None else None
    started = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=name, ContentType=content_type,
                         Metadata={"sha256": sha256})  # (its answer lost: the intent stays noted)
    upload = {"Bucket": bucket, "Key": name, "UploadId": started["UploadId"]}
    if notes is not None:
        # An answer botocore had to ask for again may be the second upload the store made: the intent stays.
        retried = started.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0
        notes.opened(bucket, name, started["UploadId"], None if retried else intent)
    try:
        digest, sent = hashlib.sha256(), 0
        parts: list[dict[str, Any]] = []
        for number, chunk in enumerate(_chunks(local), start=1):
            if stop.is_set():
                raise RetryStopped(f"sending {path}: the sync stopped")
            digest.update(chunk)
            sent += len(chunk)
            # Content-MD5: the store checks each part itself. (Its ETag is not always the part's MD5:
            # SSE-KMS and SSE-C buckets answer with another value, so it cannot be compared here.)
            md5 = base64.b64encode(hashlib.md5(chunk, usedforsecurity=False).digest()).decode()
            # A part that fails for a moment is sent again by itself (the part is in memory), not the whole
            # file from its first byte: botocore makes only two attempts (s3_client.BOTOCORE_ATTEMPTS).
            answer = retrying(partial(fs.call_s3, "upload_part", PartNumber=number, Body=chunk,
                                      ContentMD5=md5, **upload), f"sending part {number} of {path}", stop=stop)
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        if sent != size:
            raise SyncError(f"{local} changed size while syncing; run 'localvault verify'")
        check_sha256(local, digest.hexdigest(), sha256)
        fs.call_s3("complete_multipart_upload", MultipartUpload={"Parts": parts}, **upload)
    except BaseException:
        with contextlib.suppress(Exception):  # the store unreachable now: the note stays, for the next sync
            fs.call_s3("abort_multipart_upload", **upload)
            _closed(notes, started["UploadId"])
        raise
    _closed(notes, started["UploadId"])


def abort_left(fs: Any, notes: OpenUploads | None) -> None:
    """Abort the multipart uploads ``notes`` still names (a sync killed outright left them); one the store
    cannot abort now stays noted for the next sync."""
    if notes is None:
        return
    for bucket, key, upload_id in notes.left():
        try:
            if not upload_id:  # its creation's answer never came: the store's unfinished uploads of the key
                _abort_unnamed(fs, notes, bucket, key)
                continue
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        except FileNotFoundError:  # (NoSuchUpload: aborted or completed already)
            pass
        except Exception:  # unreachable now, or refused: tried again by the next sync
            continue
        _closed(notes, upload_id)


def _abort_unnamed(fs: Any, notes: OpenUploads, bucket: str, key: str) -> None:
    try:
        listed = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key).get("Uploads", [])
    except (PermissionError, NotImplementedError, AttributeError) as exc:  # never will: not noted for ever
        log.warning("could not list the unfinished uploads of %s to abort one a lost answer left (%s); a "
                    "lifecycle rule (AbortIncompleteMultipartUpload) removes it", key, exc)
        listed = []
    for upload in listed:
        if upload["Key"] == key:
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
