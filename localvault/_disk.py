"""Linux disk calls on the local filesystem, for :mod:`localvault.files` and the rest: opening regular files
only, fsyncs of files and folders, ``syncfs`` and ``sync_file_range`` through ctypes where Linux has them, a
streamed listing, hashing. Whole-file durable writes are :mod:`localvault._durable`'s.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from .errors import StorageError

T = TypeVar("T")

#: Names of files being written; never a final name.
TEMP_PREFIX = ".tmp-"
#: A temporary file younger than this may belong to a write in progress in another process; an older one is
#: left over from a write cut short.
STALE_TEMP_SECONDS = 3600
#: Bytes read at a time when hashing a stream.
DIGEST_CHUNK = 1024 * 1024


class NotRegularFileError(OSError):
    """The path names something else than a regular file (a named pipe, a device, a folder)."""


class FolderNotFileError(NotRegularFileError, IsADirectoryError):
    """A folder is where a regular file was expected (an IsADirectoryError too, as ``open`` raises)."""


def not_regular(mode: int, path: str | os.PathLike[str]) -> NotRegularFileError:
    """The error for something of this ``st_mode`` found where a regular file was expected."""
    if stat.S_ISDIR(mode):
        return FolderNotFileError(errno.EISDIR, "a folder, not a file", os.fspath(path))
    return NotRegularFileError(errno.EINVAL, "not a regular file", os.fspath(path))


def open_regular_fd(path: str | os.PathLike[str], *, follow: bool = True) -> int:
    """A file descriptor for reading the regular file at ``path``; :class:`NotRegularFileError` for anything else.

    Opened without blocking, then checked: opening a named pipe (a FIFO) for
    reading would otherwise wait for a writer, for ever. (``O_NONBLOCK`` does
    nothing to reads of a regular file.) ``follow=False``: OSError (ELOOP) if
    ``path`` is a symbolic link.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise not_regular(mode, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """:func:`open_regular_fd` as a binary file object."""
    return os.fdopen(open_regular_fd(path), "rb")


def in_folder(directory: str, action: Callable[[], T]) -> T:
    """``action()``: a create, link or rename into ``directory``, which is made when missing, on first use
    (mkdir is not free) or when another process removed it, then empty, in between (a discard or a prune of
    a job's folder)."""
    for attempt in range(5):
        try:
            return action()
        except FileNotFoundError:
            if attempt == 4:
                raise
        try:
            os.makedirs(directory, exist_ok=True)
        except FileNotFoundError:  # a parent removed while the folders were being made
            pass
    raise AssertionError("unreachable")


#: What opening a folder to fsync it, or its fsync, may answer where that cannot be done: a parent we may write
#: to but not read (mode -wx), a mount that cannot fsync a folder (CIFS before Linux 4.17, some FUSE mounts).
FOLDER_FSYNC_UNAVAILABLE = frozenset({errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def fsync_folder(path: str | os.PathLike[str]) -> None:
    """fsync a folder, making the entries made or removed in it durable; where the folder cannot be fsynced
    (:data:`FOLDER_FSYNC_UNAVAILABLE`), nothing better can be done and nothing is raised."""
    try:
        fsync_path(path)
    except OSError as exc:
        if exc.errno not in FOLDER_FSYNC_UNAVAILABLE:
            raise


def fsync_folders_left(top: str, folders: Iterable[str]) -> None:
    """fsync each of ``folders`` (paths under ``top``) files were removed from, once each, or where one is gone
    (an emptied job folder removed, a user folder removed by hand) its nearest parent that exists, up to ``top``.
    An OSError names the folder (``filename``)."""
    def nearest(path: str) -> str:
        while path != top and len(path) > len(top) and not os.path.isdir(path):
            path = os.path.dirname(path)
        return path

    for path in {nearest(folder.rstrip("/")) for folder in folders}:
        while True:
            try:
                fsync_folder(path)
                break
            except FileNotFoundError:  # removed meanwhile (by another process)
                if path == top:  # (``top`` itself gone: no removal left to make durable)
                    break
                path = nearest(os.path.dirname(path))
            except OSError as exc:
                exc.filename = exc.filename or path
                raise


def make_folders_durably(path: str | os.PathLike[str]) -> None:
    """``os.makedirs(path, exist_ok=True)``, then fsync the parent of each folder it made, deepest first: a new
    folder's entry in its parent is durable only once that parent is fsynced (the files later renamed into it,
    and its own fsync, do not make it so)."""
    missing = []
    folder = os.path.abspath(path)
    while not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    os.makedirs(path, exist_ok=True)
    for made in missing:
        fsync_folder(os.path.dirname(made))


def create_in_folder(directory: str, temp: str) -> int:
    """Create and open the new file ``temp`` in ``directory`` (see :func:`in_folder`)."""
    return in_folder(directory, lambda: os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a folder by path (a folder's fsync makes renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> None:
    """Remove a file if it is there; any error is ignored (used while cleaning up after another)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def os_error(exc: OSError, path: object) -> StorageError:
    """The StorageError for a failed write to ``path``: what went wrong and what to do."""
    if exc.errno == errno.ENOSPC:
        return StorageError(f"the disk is full while writing {path}; free some space and try again")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageError(f"cannot write {path}: {exc.strerror}; check the folder's permissions")
    return StorageError(f"cannot write {path}: {exc.strerror or exc}")


_LIBC: object = None


def walk_files(base: str, on_error: Callable[[str, OSError], None] | None = None) -> Iterator[str]:
    """Files under ``base`` (relative, "/"-separated), streamed: unlike ``os.walk``, a folder of a
    million files is never held as one list. Links to folders are not followed (as ``os.walk``).

    A folder that cannot be listed (no permission, a disk error) raises its OSError, or with ``on_error`` is
    passed to it (its path relative to ``base``, ending in "/"; "" for ``base``) and the walk goes on.
    """
    pending = [""]
    while pending:
        prefix = pending.pop()
        try:
            with os.scandir(f"{base}/{prefix}" if prefix else base) as entries:
                for entry in entries:
                    if not entry.is_dir():
                        yield prefix + entry.name
                    elif not entry.is_symlink():
                        pending.append(f"{prefix}{entry.name}/")
        except (FileNotFoundError, NotADirectoryError):  # removed meanwhile
            continue
        except OSError as exc:
            if on_error is None:
                raise
            on_error(prefix, exc)


def _libc() -> object | None:
    """The C library through ctypes (Linux only), for syncfs and sync_file_range."""
    global _LIBC
    if _LIBC is None and sys.platform.startswith("linux"):
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def sync_filesystem(path: str) -> bool:
    """``syncfs(2)`` on the filesystem holding ``path``; False if unavailable or failing."""
    try:
        libc = _libc()
        if libc is None:
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            result: int = libc.syncfs(fd)  # type: ignore[attr-defined]
            return result == 0
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return False


def start_writeback(fd: int) -> None:
    """Ask Linux to start writing a file's dirty pages (``sync_file_range(SYNC_FILE_RANGE_WRITE)``); no wait."""
    try:
        libc = _libc()
        if libc is not None:
            import ctypes

            libc.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), 2)  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        pass


def drop_cached(path: str) -> None:
    """Tell Linux a file's pages need not stay cached (``POSIX_FADV_DONTNEED``); only clean pages go. Best effort."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (OSError, AttributeError):
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def stream_digest(reader: BinaryIO, algorithm: str = "sha256") -> str:
    """The hex digest of everything ``reader`` has left (hashlib.file_digest would do, from Python 3.11)."""
    digest = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")  # MD5 only to compare with S3 ETags
    while chunk := reader.read(DIGEST_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The hex digest of the whole local file at ``path``, read a chunk at a time."""
    with open(path, "rb") as reader:
        return stream_digest(reader, algorithm)


def filesystem_type(path: Path) -> str | None:
    """The type of the mount holding ``path`` (Linux /proc/mounts), or None."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best, best_type = "", None
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            mount_point = parts[1].replace("\\040", " ")
            if (target == mount_point or target.startswith(mount_point.rstrip("/") + "/")) and len(mount_point) >= len(best):
                best, best_type = mount_point, parts[2]
    return best_type


def on_read_only_filesystem(path: Path) -> bool:
    """Whether ``path`` lies on a filesystem mounted read-only (a backup disk, a snapshot)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # (no statvfs on Windows)
        return False


class SourceReadError(StorageError):
    """The file being copied in could not be read: its side's fault, not the vault's."""


def open_source(source: Path) -> BinaryIO:
    try:
        return open_regular(source)
    except OSError as exc:
        raise SourceReadError(f"cannot read {source}: {exc.strerror or exc}") from None


def read_source(reader: BinaryIO, source: Path) -> bytes:
    try:
        return reader.read(DIGEST_CHUNK)
    except OSError as exc:
        raise SourceReadError(f"cannot read {source}: {exc.strerror or exc}") from None
