"""The sha256 a folder bucket's file carries once a sync has sent it: an extended attribute, so that later checks
of that file (a first sync of a library a NAS already holds, a ``--full`` sync) need not read it back whole.

A folder keeps no checksum of its own, as an S3 object keeps its ETag and metadata. The attribute holds the
sha256 of the bytes the sync wrote, with the file's size and mtime (in nanoseconds) then. A note is believed only
while the file still has that size and mtime and its ctime is within :data:`CTIME_SLACK_NS` of that mtime: a
rewrite moves the mtime, and a rewrite whose old mtime was put back (``exiftool -P``, ``touch -r``, ``cp -p``
over it) moves the ctime, which no call can set back. Such a file, a copy of one (``cp -a``: a new ctime), or
one on a filesystem without user attributes (FAT, some network mounts; an OS whose ``os`` has no ``setxattr``)
is read and hashed, as before the notes.
"""

from __future__ import annotations

import os

#: The extended attribute that holds "<sha256> <size> <mtime_ns>".
ATTRIBUTE = "user.localvault.sha256"
#: How long after its last write a noted file's inode may have changed last (the rename into place and the note
#: itself come a moment after the write; a slow network disk may take seconds).
CTIME_SLACK_NS = 60 * 10**9


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
    mtime it had then and its inode has not changed since (ctime); else None."""
    getxattr = getattr(os, "getxattr", None)
    if getxattr is None:
        return None
    try:
        value: bytes = getxattr(fd, ATTRIBUTE)
        sha256, size, mtime_ns = value.decode("ascii").split()
    except (OSError, UnicodeDecodeError, ValueError):  # none, unreadable, or not ours
        return None
    if size != str(found.st_size) or mtime_ns != str(found.st_mtime_ns) or len(sha256) != 64 or \
            not all(c in "0123456789abcdef" for c in sha256) or found.st_ctime_ns - found.st_mtime_ns > CTIME_SLACK_NS:
        return None
    return sha256
