"""The remote bucket on any fsspec URL: upload, verify, delete.

Keys are ``<user_id>/<asset_id>.<ext>`` under the bucket URL, so Supabase's
storage policies (first folder = owner) hold. Existence and size checks never
trust a cached listing: s3fs caches listings and goes stale, so every check
invalidates the cache first or asks for a fresh listing.

On S3 an object carries its sha256 as user metadata (``x-amz-meta-sha256``);
a PUT's answer carries the server's MD5 of what it stored (the ETag of a
single-part upload), which is compared with the MD5 computed while reading
the file — a verification that costs no extra request. Where the ETag is not
a plain MD5 (multipart, SSE-KMS), a fresh HEAD checks size and sha256.
Those single PUTs go past s3fs where the settings allow, but the first of a
sync (:mod:`.s3_direct`: botocore's request for the first one, signed by
botocore's signer for other keys, sent on botocore's HTTP session); every
other request, and any PUT that path cannot make, goes through s3fs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from .._disk import make_folders_durably, stream_digest
from ..config import redact_url
from ..errors import OfflineError, SyncError, first_line
from . import folder_bucket, multipart, s3_direct
from .local_reads import check_sha256, file_digest, reading
from .open_uploads import OpenUploads
from .s3_client import S3FS_ATTEMPTS, tune_s3
from .store_errors import SETTINGS_HINT, TRANSIENT_CODES, settings_errors, store_refusal

#: Files up to this size are sent in one PUT from memory; larger ones stream.
SINGLE_PUT_BYTES = 8 * 1024 * 1024
#: Multipart uploads at once per bucket (each holds a multipart.STREAM_BLOCK in memory, and aiohttp a copy).
BIG_UPLOADS = 4
#: Keys per page of an S3 listing (the API's maximum).
LIST_PAGE_KEYS = 1000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteObject:
    """What a HEAD tells of one object: its size, the sha256 it carries and its ETag where that is a plain MD5."""

    size: int
    sha256: str | None
    md5: str | None = None


class Bucket:
    """A bucket (or any folder) reachable through fsspec."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        options = dict(storage_options or {})
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        if protocol in ("s3", "s3a", "gs", "gcs", "az", "abfs"):
            options.setdefault("use_listings_cache", False)
        if protocol in ("s3", "s3a"):
            tune_s3(options)
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                PermissionError) as exc:
            raise SyncError(f"cannot use bucket URL {redact_url(url)!r}: {exc}") from None
        except OSError as exc:  # a filesystem that connects as it is made (ftp://, sftp://, github://)
            raise OfflineError(f"cannot reach the bucket {redact_url(url)}: {exc}") from None
        self.url = url
        self.shown_url = redact_url(url)  # for messages: a URL may carry user:password@
        #: Where multipart uploads under way are noted (set by a sync; see :mod:`.open_uploads`).
        self.open_uploads: OpenUploads | None = None
        self.root = root.rstrip("/")
        self.protocol = protocol
        self.is_s3 = protocol in ("s3", "s3a")
        self.is_local = protocol in ("file", "local")
        self._big_uploads = threading.BoundedSemaphore(BIG_UPLOADS)
        if self.is_s3 and hasattr(self.fs, "retries"):
            self.fs.retries = S3FS_ATTEMPTS  # (its instance is the sync's own: its options hold our session)
        self._direct = s3_direct.direct_put_for(self.fs, self.root.split("/", 1)[0]) if self.is_s3 else None
        if self.is_s3:
            multipart.give_big_blocks_back()  # (files and parts are read whole into memory, and freed)
        #: Temporary files of copies cut short long ago (a sync killed mid-copy), found by a local folder's last
        #: listing: see :meth:`remove_stale_temps`.
        self.stale_temps: list[str] = []

    def close(self) -> None:
        """Close the connections of the small files' PUTs (s3fs keeps its own, shared with other instances)."""
        if self._direct is not None:
            self._direct.close()

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def check_reachable(self, *, create: bool = True) -> None:
        """Raise OfflineError if the bucket cannot be reached, SyncError if it does not exist.

        A local (or in-memory) folder is made when its parent exists (``create``);
        a missing parent is a disk not mounted, and a missing cloud bucket is never
        made here.
        """
        try:
            self.fs.invalidate_cache(self.root)
            if self.is_s3:
                bucket = self.root.split("/", 1)[0]
                self.fs.call_s3("head_bucket", Bucket=bucket)
            elif not self.fs.exists(self.root):
                parent = self.root.rsplit("/", 1)[0] if "/" in self.root.strip("/") else ""
                if not (self.is_local or self.protocol == "memory") or (parent and not self.fs.isdir(parent)):
                    raise FileNotFoundError(self.root)
                if create:
                    if self.is_local:
                        make_folders_durably(self.root)
                    else:
                        self.fs.makedirs(self.root, exist_ok=True)
        except FileNotFoundError:
            where = ("is its disk mounted?" if self.is_local or self.protocol == "memory" else
                     "a store's bucket is made there, in its console or with its tools; localvault never makes one")
            raise SyncError(f"the bucket {self.shown_url} does not exist ({where}); create it or fix 'localvault "
                            "remote set' (a bucket made anew is empty: then run 'localvault sync --full' to send the "
                            "files again)") from None
        except PermissionError as exc:
            raise SyncError(f"no access to the bucket {self.shown_url}: {exc}; check the keys") from None
        except Exception as exc:  # network errors come as many types (aiohttp, botocore, OSError)
            if (reason := store_refusal(exc)) is not None:
                raise SyncError(f"the bucket {self.shown_url} refused the sync's first request ({reason}); fix "
                                "'localvault remote set' or the bucket's settings") from None
            if isinstance(exc, settings_errors()):
                raise SyncError(f"the bucket {self.shown_url} cannot be used: {first_line(exc)}; {SETTINGS_HINT}") from None
            # botocore's HTTP layer wraps what it raised itself: a setting of the wrong type is not a lost connection
            inner = getattr(exc, "kwargs", {}).get("error") if type(exc).__name__ == "HTTPClientError" else None
            if isinstance(inner, (ValueError, TypeError, AttributeError)):
                exc = inner
            if isinstance(exc, (ValueError, TypeError, AttributeError)) or type(exc).__name__ == "ParamValidationError":
                # settings the client cannot use (an endpoint without http://, a bucket name S3 refuses): no retry helps
                detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
                raise SyncError(f"the bucket {self.shown_url} cannot be used with these settings: {detail}; fix "
                                "'localvault remote set'") from None
            raise OfflineError(f"cannot reach the bucket {self.shown_url}: {first_line(exc)}") from None

    def listing(self, prefix: str) -> dict[str, int]:
        """{key: size} of every object under ``prefix``, from a fresh listing."""
        return {key: size for key, (size, _md5) in self.objects(prefix).items()}

    def objects(self, prefix: str) -> dict[str, tuple[int, str | None]]:
        """{key: (size, MD5 or None)} of every object under ``prefix``, from a fresh listing.

        The MD5 is an S3 object's ETag where that is a plain MD5 of its bytes
        (a single-part upload). S3 is listed page by page (1,000 keys each) and
        local folders walked directly, keeping only these: fsspec's detailed
        listing of a 100,000-object folder held ~100 MB of dicts at once.
        """
        base = self.path(prefix).rstrip("/")
        offset = len(self.root) + 1
        if self.is_s3:
            return {name[offset:]: (size, md5) for name, size, md5 in self._s3_objects(base)}
        if self.is_local:
            self.stale_temps = []
            return {name[offset:]: (size, None) for name, size in folder_bucket.walk_sizes(base, self.stale_temps)}
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {name[offset:]: (int(info.get("size") or 0), None) for name, info in found.items()
                if info.get("type", "file") != "directory"}

    def remove_stale_temps(self) -> None:
        """Remove the temporary files of copies cut short long ago that the last listing of a local folder found
        (a push calls this once it is done; a dry run does not)."""
        folder_bucket.remove(self.stale_temps)
        self.stale_temps = []

    def _s3_objects(self, base: str) -> Iterator[tuple[str, int, str | None]]:
        bucket, _, key_prefix = base.partition("/")
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": f"{key_prefix}/" if key_prefix else "",
                                   "MaxKeys": LIST_PAGE_KEYS}
        while True:
            page = self.fs.call_s3("list_objects_v2", **request)
            for item in page.get("Contents", []):
                yield f"{bucket}/{item['Key']}", int(item["Size"]), _plain_md5(item.get("ETag"))
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]

    def head(self, key: str) -> RemoteObject | None:
        """Size and sha256 (where stored) of one object, asked of the store itself."""
        path = self.path(key)
        self.fs.invalidate_cache(path)
        try:
            if self.is_s3:
                bucket, name = path.split("/", 1)
                answer = self.fs.call_s3("head_object", Bucket=bucket, Key=name)
                return RemoteObject(int(answer["ContentLength"]), answer.get("Metadata", {}).get("sha256"),
                                    _plain_md5(answer.get("ETag")))
            info = self.fs.info(path)
            return RemoteObject(int(info["size"]), None)
        except FileNotFoundError:
            return None

    def sha256_of(self, key: str, size: int) -> str | None:
        """The sha256 of an object read whole, where the store keeps no checksum (a folder), or as a sync of
        ours noted it on a local folder's file (:mod:`.folder_bucket`); None if it is missing or not
        ``size`` bytes long."""
        path = self.path(key)
        try:
            if self.is_local:  # the plain file: no fsspec wrapper (a first sync may hash 100,000 of them)
                with open(path, "rb", buffering=0) as handle:
                    found_stat = os.fstat(handle.fileno())
                    if found_stat.st_size != size:
                        return None
                    return folder_bucket.recorded(handle.fileno(), found_stat) or stream_digest(handle, "sha256")
            found = self.head(key)
            if found is None or found.size != size:
                return None
            with self.fs.open(path, "rb") as handle:
                return stream_digest(handle, "sha256")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def upload(self, local: Path, key: str, sha256: str, size: int, content_type: str,
               stop: threading.Event | None = None, on_part: Callable[[int, int], None] | None = None) -> None:
        """Send one file and check what the store received; SyncError if it differs.

        The bytes sent are hashed first: a file that no longer matches its
        row's sha256 (damaged or changed on disk) is refused, never stored
        under a checksum it does not have. A local file that cannot be read
        is a :class:`SyncError` naming it, not a network error to retry.
        ``stop`` set (the sync stopping) ends a multipart upload between parts
        (:class:`RetryStopped`), and one waiting for its turn. ``on_part(number, size)``: a multipart upload's
        parts as the store holds them (a big file's progress); other uploads report nothing.
        """
        path = self.path(key)
        if self.is_s3 and size <= SINGLE_PUT_BYTES:
            with reading(local):
                data = local.read_bytes()
            if len(data) != size:
                raise SyncError(f"{local} changed size while syncing; run 'localvault verify'")
            check_sha256(local, hashlib.sha256(data).hexdigest(), sha256)
            bucket, name = path.split("/", 1)
            etag = self._direct.put(name, data, sha256, content_type) if self._direct is not None else None
            if etag is None:
                etag = self.fs.call_s3("put_object", Bucket=bucket, Key=name, Body=data, ContentType=content_type,
                                       Metadata={"sha256": sha256}).get("ETag")
            if _plain_md5(etag) == hashlib.md5(data, usedforsecurity=False).hexdigest():
                return
        elif self.is_s3:
            with self._big_uploads:
                multipart.send_in_parts(self.fs, self.open_uploads, local, path, sha256, size, content_type,
                                        stop or threading.Event(), on_part)
        elif self.is_local:
            folder_bucket.copy_checked(local, path, sha256, size)
        else:
            with reading(local):
                digest = file_digest(local)
            check_sha256(local, digest, sha256)
            parent = os.path.dirname(path)
            if parent:
                self.fs.makedirs(parent, exist_ok=True)
            self.fs.put_file(str(local), path)
        found = self.head(key)
        if found is None or found.size != size or (found.sha256 is not None and found.sha256 != sha256):
            raise SyncError(f"the bucket holds a different {key} than was sent; it will be sent again")

    def abort_left(self, *, resumable_too: bool = True) -> None:
        """Abort the multipart uploads a sync killed outright left (noted in :attr:`open_uploads`), and unless
        ``resumable_too=False``, those an interruption left to go on with; see :func:`.multipart.abort_left`."""
        multipart.abort_left(self.fs, self.open_uploads, resumable_too=resumable_too)

    def delete(self, keys: list[str]) -> dict[str, str]:
        """Remove objects; keys already gone are fine. Returns {key: the store's reason} of those it refused.

        On S3 the DeleteObjects answer is read key by key (s3fs drops its
        errors): a key refused for now (the store busy) raises
        :class:`OfflineError` for the caller to retry.
        """
        if not keys:
            return {}
        refused: dict[str, str] = {}
        if self.is_s3:
            try:
                for start in range(0, len(keys), LIST_PAGE_KEYS):  # DeleteObjects takes 1,000 keys at most
                    refused.update(self._s3_delete(keys[start:start + LIST_PAGE_KEYS]))
            except FileNotFoundError:  # s3fs's NoSuchBucket: the keys are not a user's files here
                raise SyncError(f"the bucket {self.shown_url} no longer exists; create it or 'localvault remote set' "
                                "another, then sync again; nothing was lost") from None
        else:
            paths = [self.path(k) for k in keys]
            try:
                self.fs.rm(paths)
            except FileNotFoundError:
                for path in paths:
                    try:
                        self.fs.rm_file(path)
                    except FileNotFoundError:
                        pass
            if self.is_local:
                folder_bucket.removals_made_durable(paths)
        self.fs.invalidate_cache(self.root)
        return refused

    def _s3_delete(self, keys: list[str]) -> dict[str, str]:
        bucket = self.root.split("/", 1)[0]
        names = {self.path(k).split("/", 1)[1]: k for k in keys}
        answer = self.fs.call_s3("delete_objects", Bucket=bucket,
                                 Delete={"Objects": [{"Key": name} for name in names], "Quiet": True})
        refused: dict[str, str] = {}
        for error in answer.get("Errors", []):
            code = str(error.get("Code") or "")
            if code == "NoSuchKey":
                continue
            key = names.get(str(error.get("Key")), str(error.get("Key")))
            reason = f"{code}: {error.get('Message') or ''}".strip().rstrip(":")
            if code in TRANSIENT_CODES:
                raise OfflineError(f"the bucket {self.shown_url} could not delete {key} for now ({reason})")
            refused[key] = reason
        return refused


def _plain_md5(etag: object) -> str | None:
    """An ETag that is the MD5 of the object's bytes (single-part upload), else None."""
    text = str(etag or "").strip('"').lower()
    return text if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else None

