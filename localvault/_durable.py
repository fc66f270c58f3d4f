"""Whole files written durably on the local disk: a temporary file (or, where Linux can, an unnamed one),
fsynced, renamed or linked into place, and the folder fsynced."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, Protocol

from ._disk import TEMP_PREFIX, fsync_path, open_regular, os_error, unlink_quietly, write_all


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` on the local disk: temp file, fsync, rename, fsync folder."""
    # The name after the random part: a leftover of a write cut short is known by it (Vault.create adopts
    # a folder holding a cut-short localvault.toml); only short names are written this way.
    temp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            write_all(fd, data)  # a write may be short (a signal, a nearly full disk)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        fsync_path(path.parent)
    except OSError as exc:
        unlink_quietly(temp)
        raise os_error(exc, path) from None


def move_durably(source: str, target: str) -> None:
    """Move a file to ``target`` (which must not exist), durably; across filesystems by copy, fsync, rename
    and unlink (a bucket folder may be a mount or a link to another disk)."""
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_durably(source, target)
        os.unlink(source)
    else:
        fsync_path(os.path.dirname(target))
    fsync_path(os.path.dirname(source))


def copy_durably(source: str, target: str) -> None:
    """Copy a file to ``target`` (which must not exist) with its times and mode: temp file, fsync, rename,
    fsync of the folder."""
    with open_regular(source) as reader:  # (a named pipe would block)
        write_durably(reader, target, times_from=source)  # its times and mode tell recovered files apart
    fsync_path(os.path.dirname(target))


class Readable(Protocol):
    """What :func:`write_durably` reads from: a binary stream's ``read``."""

    def read(self, size: int = -1, /) -> bytes: ...


def write_durably(reader: Readable, target: str | os.PathLike[str], *, times_from: str | None = None,
                  replace: bool = True) -> None:
    """Write a stream to ``target`` through a temporary file in its folder: written, fsynced, then renamed; the
    temporary file is removed on any failure, Ctrl-C included. The caller fsyncs the folder (or not).
    ``times_from``: a file whose times and mode the copy takes. ``replace=False``: FileExistsError if
    ``target`` exists when the copy is done (a hard link publishes it: no check-then-rename gap); on Linux the
    copy is then an unnamed file until linked (:func:`_write_unnamed`), so a process killed meanwhile leaves
    nothing in a folder that is not the vault's (an export's destination)."""
    if not replace and _write_unnamed(reader, target, times_from):
        return
    temp = os.path.join(os.path.dirname(target), f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    try:
        with open(temp, "xb") as writer:
            _copy_in(reader, writer)
        if times_from is not None:
            shutil.copystat(times_from, temp)
        if replace:
            os.replace(temp, target)
        else:
            _publish_new(temp, target)
    except BaseException:
        unlink_quietly(Path(temp))
        raise


#: What opening an unnamed file (O_TMPFILE) answers where the filesystem or kernel cannot make one.
_NO_UNNAMED_FILES = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP})


def _write_unnamed(reader: Readable, target: str | os.PathLike[str], times_from: str | None) -> bool:
    """Write the stream into an unnamed file in ``target``'s folder (O_TMPFILE), fsync it, then link it in as
    ``target`` (FileExistsError if that exists): the kernel frees the file of a process killed before the
    link. False, with nothing written, where that cannot be done (not Linux, no /proc, a filesystem without
    O_TMPFILE): the caller writes a named temporary file instead."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return False
    try:
        fd = os.open(os.path.dirname(target) or ".", flag | os.O_WRONLY, 0o666)
    except OSError as exc:
        if exc.errno in _NO_UNNAMED_FILES:
            return False
        raise
    with open(fd, "wb") as writer:
        _copy_in(reader, writer)
        if times_from is not None:
            shutil.copystat(times_from, f"/proc/self/fd/{fd}")
        # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N needs no privilege (AT_EMPTY_PATH does). Python calls plain
        # link(), which does not follow the link, unless a dir_fd is given: hence that of /proc/self/fd.
        proc = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY)
        try:
            os.link(str(fd), target, src_dir_fd=proc, follow_symlinks=True)
        finally:
            os.close(proc)
    return True


def _copy_in(reader: Readable, writer: BinaryIO) -> None:
    """The stream's bytes into ``writer``, flushed and fsynced."""
    shutil.copyfileobj(reader, writer, 1024 * 1024)
    writer.flush()
    os.fsync(writer.fileno())


def _publish_new(temp: str, target: str | os.PathLike[str]) -> None:
    """Give ``temp`` the name ``target``, which must not exist (FileExistsError); ``temp`` is gone after."""
    try:
        os.link(temp, target)  # fails if target exists, atomically
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links (FAT, some network mounts): check, then rename
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(target)) from None
        os.replace(temp, target)
        return
    os.unlink(temp)


__all__ = ["Readable", "atomic_write_bytes", "copy_durably", "move_durably", "write_durably"]
