"""A bucket that is a local folder (a NAS mount, a second disk): how a sync writes its files, lists them, and
knows them again by the sha256 it noted on each.

A sync writes a file as the vault writes its own (a temporary file in the same folder, fsync, rename, fsync of
the folder), hashing the bytes as they are written: the file is renamed into place only if they are its row's.
Then it notes their sha256 in an extended attribute, so that later checks of that file (another vault of the
same library, one restored from a backup) need not read it back whole: a folder keeps no checksum of its own,
as an S3 object keeps its ETag and metadata.

The note holds the sha256 with the file's size, mtime and ctime (in nanoseconds) as they were when it was
noted. It is believed only while the file keeps that size and mtime and its ctime has not moved more than
:data:`CTIME_SLACK_NS` since: a rewrite moves the mtime, and a rewrite whose old mtime was put back
(``exiftool -P``, ``touch -r``, ``cp -p`` over it) moves the ctime, which no call can set back. Such a file, a
copy of one (``cp -a``: a new ctime), or one on a filesystem without user attributes (FAT, some network mounts;
an OS whose ``os`` has no ``setxattr``) is read and hashed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .._disk import (
    STALE_TEMP_SECONDS,
    TEMP_PREFIX,
    fsync_folder,
    make_folders_durably,
    unlink_quietly,
    walk_files,
)
from .._durable import write_durably
from ..errors import SyncError
from .local_reads import check_sha256, reading

#: The extended attribute that holds "<sha256> <size> <mtime_ns> <ctime_ns>".
ATTRIBUTE = "user.localvault.sha256"
#: How far a noted file's ctime may move after the note (setting the note moves it a moment later; a network
#: disk's clock may answer a little late).
CTIME_SLACK_NS = 10 * 10**9


def copy_checked(local: Path, path: str, sha256: str, size: int) -> None:
    """Copy the vault's file ``local`` to ``path`` in the folder, checked and durable, and note its sha256."""
    folder = os.path.dirname(path)
    make_folders_durably(folder)
    with reading(local):
        handle = open(local, "rb")  # noqa: SIM115 (closed below; read errors are the vault's, write errors not)
    with handle:
        write_durably(_CheckedReader(handle, local, sha256, size), path)
    fsync_folder(folder)  # (where a folder cannot be fsynced, the file itself was, and the rename stands)
    record(path, sha256)


def removals_made_durable(paths: list[str]) -> None:
    """fsync the folders objects were just removed from: once the server's deletion of their rows is committed
    and acknowledged, a power cut must not bring the objects back (a deleted private image left in the bucket)."""
    for folder in sorted({os.path.dirname(path) for path in paths}):
        try:
            fsync_folder(folder)
        except FileNotFoundError:  # (its last object gone, the folder too: nothing to make durable there)
            pass


class _CheckedReader:
    """The vault's file as the copy reads it, hashed on the way; at its end, SyncError unless its bytes were the
    row's (the copy is then never renamed into place). Its read errors are the vault's (see :func:`reading`)."""

    def __init__(self, handle: BinaryIO, local: Path, sha256: str, size: int) -> None:
        self.handle, self.local, self.sha256, self.size = handle, local, sha256, size
        self.digest, self.count = hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        with reading(self.local):
            chunk = self.handle.read(n)
        if chunk:
            self.digest.update(chunk)
            self.count += len(chunk)
        elif self.count != self.size:
            raise SyncError(f"{self.local} changed size while syncing; run 'localvault verify'")
        else:
            check_sha256(self.local, self.digest.hexdigest(), self.sha256)
        return chunk


def record(path: str, sha256: str) -> None:
    """Note ``sha256`` on the file at ``path`` (just written, with those bytes), bound to its size and times."""
    setxattr = getattr(os, "setxattr", None)
    if setxattr is None:
        return
    try:
        found = os.stat(path)
        note = f"{sha256} {found.st_size} {found.st_mtime_ns} {found.st_ctime_ns}"
        setxattr(path, ATTRIBUTE, note.encode())
    except OSError:  # no user attributes on this filesystem, or the file is gone: it is hashed when checked
        pass


def recorded(fd: int, found: os.stat_result) -> str | None:
    """The sha256 noted on the open file ``fd`` (whose ``fstat`` is ``found``), if it still has the size and
    mtime it had then and its inode has not changed since (ctime); else None."""
    getxattr = getattr(os, "getxattr", None)
    if getxattr is None:
        return None
    try:
        value: bytes = getxattr(fd, ATTRIBUTE)
        sha256, size, mtime_ns, ctime_ns = value.decode("ascii").split()
        unchanged = (int(size) == found.st_size and int(mtime_ns) == found.st_mtime_ns
                     and found.st_ctime_ns - int(ctime_ns) <= CTIME_SLACK_NS)
    except (OSError, UnicodeDecodeError, ValueError):  # none, unreadable, or not ours
        return None
    if not unchanged or len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        return None
    return sha256


def walk_sizes(folder: str, stale_temps: list[str]) -> Iterator[tuple[str, int]]:
    """(path, size) of every file under the folder but the temporary files of copies; nothing if it does not
    exist. Those of copies cut short long ago (:data:`STALE_TEMP_SECONDS`) are added to ``stale_temps``."""
    old = time.time() - STALE_TEMP_SECONDS
    for relative in walk_files(folder):
        path = f"{folder}/{relative}"
        try:
            found = os.stat(path)
        except FileNotFoundError:  # removed meanwhile
            continue
        if os.path.basename(relative).startswith(TEMP_PREFIX):
            if found.st_mtime < old:
                stale_temps.append(path)
            continue
        yield path, found.st_size


def remove(paths: list[str]) -> None:
    """Remove files, those already gone included (the stale temporary files a listing found)."""
    for path in paths:
        unlink_quietly(Path(path))
