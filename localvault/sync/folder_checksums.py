"""The sha256 a folder bucket's file carries once a sync has sent it: an extended attribute, so that later checks
of that file (a first sync of a library a NAS already holds, a ``--full`` sync) need not read it back whole.

A folder keeps no checksum of its own, as an S3 object keeps its ETag and metadata. The attribute holds the
sha256 with the file's size and mtime (in nanoseconds) when it was written; a file changed since (other bytes
written in place change its mtime) no longer matches them and is hashed as before. A filesystem without user
attributes (FAT, some network mounts; an OS whose ``os`` has no ``setxattr``) keeps none: its files are hashed.
"""

from __future__ import annotations

import os

#: The extended attribute that holds "<sha256> <size> <mtime_ns>".
ATTRIBUTE = "user.localvault.sha256"


def record(path: str, sha256: str) -> None:
    """Note ``sha256`` on the file at ``path`` (just written, with those bytes), bound to its size and mtime."""
    setxattr = getattr(os, "setxattr", None)
    if setxattr is None:
        return
    try:
        found = os.stat(path)
        setxattr(path, ATTRIBUTE, f"{sha256} {found.st_size} {found.st_mtime_ns}".encode())
    except OSError:  # no user attributes on this filesystem, or the file is gone: it is hashed when checked
        pass


def recorded(fd: int, found: os.stat_result) -> str | None:
    """The sha256 noted on the open file ``fd`` (whose ``fstat`` is ``found``), if it still has the size and
    mtime it had then; else None."""
    getxattr = getattr(os, "getxattr", None)
    if getxattr is None:
        return None
    try:
        value: bytes = getxattr(fd, ATTRIBUTE)
        sha256, size, mtime_ns = value.decode("ascii").split()
    except (OSError, UnicodeDecodeError, ValueError):  # none, unreadable, or not ours
        return None
    if size != str(found.st_size) or mtime_ns != str(found.st_mtime_ns) or len(sha256) != 64 or \
            not all(c in "0123456789abcdef" for c in sha256):
        return None
    return sha256
