"""Where ``verify --repair`` puts files without a row: ``recovered/<bucket>/<path>`` in the vault folder.

A file without a row may be the only copy of an asset (its row lost, e.g.
after an older ``vault.db`` was restored), so repair moves it aside rather
than deleting it; the user takes back what they want with ``localvault add``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid

from ._disk import fsync_path, make_folders_durably
from ._durable import copy_durably, move_durably
from .errors import LocalVaultError, StorageError
from .files import FileStore, StagedFile

log = logging.getLogger(__name__)

#: The folder, in the vault folder beside the buckets.
RECOVERED_FOLDER = "recovered"


def recover(files: FileStore, bucket: str, relative: str, *, copied: str | None = None) -> str:
    """Move a file out of its bucket into ``recovered/`` (a new name if that is taken); its new path.

    ``copied``: the copy :func:`copy_to_recovered` made already; the file is then only removed.
    """
    source = files.full_path(bucket, relative)
    target = copied or _free_path(files, bucket, relative)
    try:
        if copied is not None:
            os.unlink(source)
            fsync_path(os.path.dirname(source))
        elif files.local:
            move_durably(source, target)
        else:
            files.fs.mv(source, target)
    except OSError as exc:
        raise StorageError(f"cannot move {source} to {target}: {exc.strerror or exc}") from None
    files.prune_folders(bucket, [os.path.dirname(relative)])
    return target


def copy_to_recovered(files: FileStore, bucket: str, relative: str) -> str | None:
    """Where ``recovered/`` is on another filesystem than the file (a bucket folder mounted or linked
    elsewhere), a durable copy of it there, made before :func:`recover` so that the part done under the
    write lock stays quick; None where a rename will do (or the file is gone)."""
    if not files.local:
        return None
    source = files.full_path(bucket, relative)
    base = f"{files.root}/{RECOVERED_FOLDER}"
    try:
        make_folders_durably(base)
        if os.stat(source).st_dev == os.stat(base).st_dev:
            return None
        target = _free_path(files, bucket, relative)
        copy_durably(source, target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot copy {source} to {base}: {exc.strerror or exc}") from None
    return target


def _free_path(files: FileStore, bucket: str, relative: str) -> str:
    base = f"{files.root}/{RECOVERED_FOLDER}/{bucket}"
    target = f"{base}/{relative}"
    try:
        if files.local:
            make_folders_durably(os.path.dirname(target))
        else:
            files.fs.makedirs(os.path.dirname(target), exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file recovered earlier bears one of its folders' names
        target = f"{base}/{uuid.uuid4().hex[:12]}-{os.path.basename(relative)}"
    except OSError as exc:
        raise StorageError(f"cannot make {os.path.dirname(target)}: {exc.strerror or exc}") from None
    stem, extension = os.path.splitext(target)
    number = 1
    while files.fs.exists(target):
        target = f"{stem}-{number}{extension}"
        number += 1
    return target


def set_aside_strays(conn: sqlite3.Connection, files: FileStore, bucket: str,
                     moves: list[tuple[StagedFile, str]]) -> None:
    """Inside the write transaction, before staged files are renamed onto their paths: move any file already
    there that no row uses and no queued deletion covers to ``recovered/``. Such a file may be the only copy
    of an asset whose row was lost (an older ``vault.db`` restored), as ``verify --repair`` assumes. One
    with the very bytes being added (left by an add that crashed before its commit, and now run again) is
    simply replaced, as is one whose deletion is queued (draining then skips its path, which a row uses).
    A free path costs one ``stat``.
    """
    strays = [(staged, path) for staged, path in moves if files.exists(bucket, path)]
    if not strays:
        return
    queued = {path for (path,) in conn.execute(
        f"SELECT path FROM pending_deletes WHERE bucket = ? AND path IN ({','.join('?' * len(strays))})",
        (bucket, *(path for _staged, path in strays)))}
    for staged, path in strays:
        if path in queued or _same_bytes(files, bucket, path, staged):
            continue
        moved = recover(files, bucket, path)
        log.warning("%s/%s had no row; moved to %s before a new asset took its path (add it back with"
                    " 'localvault add' if you want it)", bucket, path, moved)


def _same_bytes(files: FileStore, bucket: str, path: str, staged: StagedFile) -> bool:
    try:
        return files.size(bucket, path) == staged.size and files.sha256(bucket, path) == staged.sha256
    except (LocalVaultError, OSError):  # unreadable: kept aside, never overwritten
        return False
