"""The vault's two buckets on an fsspec filesystem, written crash-safely.

Layout: ``workspace-temp/<user_id>/<job_id>/<asset_index>.<ext>`` and
``user-library/<user_id>/<asset_id>.<ext>``. A file is first written to a
temporary name in its final folder, fsynced, then renamed into place; the
caller inserts its row right after. Local disks get the fast paths (hard
links, ``os.replace``, directory fsync); any other fsspec filesystem works
through its own API.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from . import models
from ._disk import (
    TEMP_PREFIX,
    SourceReadError,
    create_in_folder,
    drop_cached,
    file_digest,
    fsync_path,
    in_folder,
    not_regular,
    open_regular,
    open_source,
    os_error,
    read_source,
    start_writeback,
    stream_digest,
    sync_filesystem,
    unlink_quietly,
    walk_files,
    write_all,
)
from ._sqlite_errors import callers_own_errors
from .errors import FileTooLargeError, InvalidInputError, StorageError

WORKSPACE_BUCKET = "workspace-temp"
LIBRARY_BUCKET = "user-library"
BUCKETS = (WORKSPACE_BUCKET, LIBRARY_BUCKET)
#: A staged file at least this big starts its writeback at once (smaller ones: the batch's sync sends them
#: together; starting each one alone cost more than it saved, measured with 10 KB and 100 KB files; 2 MB
#: files gained a little).
WRITEBACK_MIN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StagedFile:
    """A file copied into a bucket under a temporary name, not yet visible."""

    bucket: str
    temp_path: str
    sha256: str
    size: int
    linked: bool = False  # a hard link to the source (``stage_link``), not a copy


class FileStore:
    """The two buckets under ``root`` on ``fs`` (the local disk by default)."""

    def __init__(self, root: str | Path, fs: fsspec.AbstractFileSystem | None = None) -> None:
        if fs is not None and not isinstance(fs, fsspec.AbstractFileSystem):
            raise InvalidInputError(f"fs must be an fsspec filesystem (such as fsspec.filesystem('file')), not {fs!r}")
        self.fs = fs or LocalFileSystem()
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = str(root).rstrip("/")

    def full_path(self, bucket: str, relative: str) -> str:
        return f"{self.root}/{bucket}/{relative}"

    def local_path(self, bucket: str, relative: str) -> Path | None:
        """The file's path on the local disk, or None for another filesystem."""
        return Path(self.full_path(bucket, relative)) if self.local else None

    def create_buckets(self) -> None:
        for bucket in BUCKETS:
            self.fs.makedirs(f"{self.root}/{bucket}", exist_ok=True)

    # --------------------------------------------------------------- write

    def stage(self, source: Path, bucket: str, folder: str, on_bytes: Callable[[int], None] | None = None,
              *, sync: bool = True, name: str | None = None) -> StagedFile:
        """Copy ``source`` into ``bucket/folder`` under a temp name, hashing while copying; FileTooLargeError once
        past 1 GiB (a file growing while copied, or a vault's file replaced by a link to ``/dev/zero``), and
        SourceReadError for a source that is no regular file (a named pipe would block the read for ever).

        Fsynced unless ``sync=False``: batch imports then make a whole batch
        durable at once (:meth:`syncfs`, or :meth:`sync_files`) before committing it.
        ``name``: the temp name after :data:`TEMP_PREFIX` (default: a random one).
        """
        directory = self.full_path(bucket, folder)
        temp = f"{directory}/{TEMP_PREFIX}{name or uuid.uuid4().hex}"
        digest = hashlib.sha256()
        size = 0

        def copy(reader: BinaryIO, write: Callable[[bytes], object]) -> None:
            nonlocal size
            while chunk := read_source(reader, source):
                size += len(chunk)
                if size > models.MAX_FILE_BYTES:
                    raise FileTooLargeError(f"{source} grew past {models.MAX_FILE_BYTES:,} bytes while it was "
                                            "copied into the vault; the limit is 1 GiB")
                digest.update(chunk)
                write(chunk)
                if on_bytes:
                    with callers_own_errors():
                        on_bytes(len(chunk))

        try:
            if not self.local:
                self.fs.makedirs(directory, exist_ok=True)
            with open_source(source) as reader:
                if self.local:
                    fd = create_in_folder(directory, temp)
                    try:
                        copy(reader, lambda chunk: write_all(fd, chunk))
                        if sync:
                            os.fsync(fd)
                    finally:
                        os.close(fd)
                else:
                    with self.fs.open(temp, "wb") as writer:
                        copy(reader, writer.write)
        except BaseException as exc:  # also on_bytes refusing (the file grew past the limit), or Ctrl-C
            self._drop_temp(temp, bucket)  # no temporary file (nor the job's folder made for it) stays
            if isinstance(exc, OSError) and not isinstance(exc, SourceReadError):  # the vault's side
                raise os_error(exc, temp) from None
            raise
        return StagedFile(bucket, temp, digest.hexdigest(), size)

    def commit(self, staged: StagedFile, relative: str, *, sync_dir: bool = True) -> None:
        """Rename a staged file to its final name, replacing any file there (the workspace first sets aside one
        no row uses), in a folder made if missing, and make it durable (with ``sync_dir=False``, the caller
        fsyncs the folders itself, once per batch: :meth:`sync_dirs`)."""
        final = self.full_path(staged.bucket, relative)
        try:
            if self.local:
                in_folder(os.path.dirname(final), lambda: os.replace(staged.temp_path, final))
                if sync_dir:
                    self._sync_folders_of(staged.bucket, relative, final)
            else:
                self.fs.mv(staged.temp_path, final)
        except OSError as exc:
            raise os_error(exc, final) from None

    def _sync_folders_of(self, bucket: str, relative: str, final: str) -> None:
        """Make a file just renamed into place durable (:meth:`sync_dirs`). On failure or Ctrl-C, the file is
        removed: the caller's transaction fails, and no row will point at it."""
        try:
            self.sync_dirs(bucket, [relative])
        except BaseException:
            unlink_quietly(Path(final))
            raise

    def discard(self, staged: StagedFile) -> None:
        self._drop_temp(staged.temp_path, staged.bucket)

    def _drop_temp(self, temp: str, bucket: str) -> None:
        """Remove a temporary file, and the workspace job folder made for it if that is now empty."""
        self._remove_path(temp)
        if self.local and bucket == WORKSPACE_BUCKET:
            with contextlib.suppress(OSError):  # not empty: another file of the job is in it
                os.rmdir(os.path.dirname(temp))

    # ------------------------------------------------------- batch staging

    def stage_data(self, data: bytes, sha256: str, bucket: str, folder: str, *, sync: bool = True,
                   name: str | None = None) -> StagedFile:
        """Write bytes already in memory (and hashed by the caller) into ``bucket/folder`` under a temp name."""
        directory = self.full_path(bucket, folder)
        temp = f"{directory}/{TEMP_PREFIX}{name or uuid.uuid4().hex}"
        try:
            if self.local:
                fd = create_in_folder(directory, temp)
                try:
                    write_all(fd, data)
                    if sync:
                        os.fsync(fd)
                    elif len(data) >= WRITEBACK_MIN_BYTES:
                        start_writeback(fd)  # the disk starts now; the batch's sync then waits for less
                finally:
                    os.close(fd)
            else:
                self.fs.makedirs(directory, exist_ok=True)
                with self.fs.open(temp, "wb") as writer:
                    writer.write(data)
        except OSError as exc:
            self._drop_temp(temp, bucket)
            raise os_error(exc, temp) from None
        return StagedFile(bucket, temp, sha256, len(data))

    def stage_link(self, source: Path, sha256: str, size: int, bucket: str, folder: str,
                   name: str | None = None) -> StagedFile | None:
        """Hard-link ``source`` into ``bucket/folder`` under a temp name; None where links are impossible.

        The caller has hashed ``source``; the staged name shares its inode
        (so no byte is copied); a symbolic link is followed to its file
        (Linux's link() would link the symlink itself). Other filesystems,
        or another device, get None.
        """
        if not self.local:
            return None
        directory = self.full_path(bucket, folder)
        temp = f"{directory}/{TEMP_PREFIX}{name or uuid.uuid4().hex}"
        target = os.path.realpath(source)
        try:
            in_folder(directory, lambda: os.link(target, temp))
        except OSError:
            return None
        return StagedFile(bucket, temp, sha256, size, linked=True)

    def syncfs(self, bucket: str, folder: str) -> bool:
        """Flush everything written to the filesystem holding ``bucket/folder`` in one call (Linux ``syncfs``):
        that folder's, not the vault's, for a bucket or a user's folder may be a disk of its own.

        False where it is not available (another OS, another fsspec filesystem,
        or the call failed): then use :meth:`sync_files` and :meth:`sync_dirs`.
        """
        return self.local and sync_filesystem(self.full_path(bucket, folder))

    def sync_files(self, bucket: str, relatives: list[str], fsync_map: Callable[..., Iterator[None]] = map) -> None:
        """Fsync files (relative to ``bucket``); ``fsync_map`` may be a thread pool's ``map`` (they overlap)."""
        if self.local:
            for _ in fsync_map(fsync_path, [self.full_path(bucket, r) for r in relatives]):
                pass

    def release_cached(self, bucket: str, relatives: list[str], release_map: Callable[..., Iterator[None]] = map) -> None:
        """Let the page cache drop durable files' pages (an import's copies would push out a rig's checkpoints)."""
        if self.local:
            for _ in release_map(drop_cached, [self.full_path(bucket, r) for r in relatives]):
                pass

    def sync_dirs(self, bucket: str, relatives: Iterable[str]) -> None:
        """Fsync the folders of files (relative to ``bucket``) and each folder above them up to the bucket's, each
        once: after renames made with ``commit(..., sync_dir=False)`` (a new job's or user's folder has its own
        entry in its parent)."""
        if self.local:
            folders: set[str] = set()
            for relative in relatives:
                folder = os.path.dirname(relative)
                while folder not in folders:
                    folders.add(folder)
                    if not folder:
                        break
                    folder = os.path.dirname(folder)
            for folder in sorted(folders, reverse=True):  # the deepest first, the bucket's last
                fsync_path(self.full_path(bucket, folder))

    def stage_from(self, source_bucket: str, source: str, bucket: str, folder: str,
                   sha256: str | None = None) -> StagedFile:
        """``source``'s bytes under a temporary name in ``bucket/folder``, for :meth:`commit`, made before the
        write's transaction (a 1 GiB copy must not hold the write lock): a hard link (:meth:`stage_link`), or a
        copy (:meth:`stage`) whose bytes must be ``sha256``'s (StorageError if they changed) where links are
        impossible or the source has other links (imported with ``--link``: its rig may rewrite it in place)."""
        src = self.full_path(source_bucket, source)
        linked = None
        if not self.local:  # another fsspec filesystem: its own copy, hashed
            staged = self._stage_remote_copy(src, bucket, folder)
        else:
            try:
                found = os.stat(src)
            except FileNotFoundError:
                raise StorageError(f"the file {src} is missing; run 'localvault verify' to check the vault") from None
            if not stat.S_ISREG(found.st_mode):  # (a named pipe would be linked, then block its hashing for ever)
                raise StorageError(f"{src} is not a regular file; run 'localvault verify' to check the vault")
            linked = self.stage_link(Path(src), sha256, found.st_size, bucket, folder) \
                if sha256 is not None and found.st_nlink == 1 else None
            # A link's bytes are hashed too, through the link itself (the very inode the commit names): a file
            # edited in place, truncated or rotten must not enter under the hash its row recorded.
            staged = linked or self.stage(Path(src), bucket, folder)
        try:
            if sha256 is not None and (file_digest(staged.temp_path) if linked else staged.sha256) != sha256:
                raise StorageError(f"the file {src} no longer holds the bytes it was stored with (changed in "
                                   "place: edited, or imported with --link and then rewritten?); nothing was "
                                   "changed; run 'localvault verify' to find the damaged files")
        except BaseException as exc:  # that, a disk error, Ctrl-C: the staged file goes
            self.discard(staged)
            if isinstance(exc, OSError) and not isinstance(exc, StorageError):
                raise StorageError(f"cannot read {src}: {exc.strerror or exc}; nothing was changed; run "
                                   "'localvault verify'") from None
            raise
        return staged

    def _stage_remote_copy(self, src: str, bucket: str, folder: str) -> StagedFile:
        temp = f"{self.full_path(bucket, folder)}/{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            self.fs.makedirs(os.path.dirname(temp), exist_ok=True)
            self.fs.copy(src, temp)
            with self.fs.open(temp, "rb") as copied:
                digest = stream_digest(copied)
            return StagedFile(bucket, temp, digest, int(self.fs.size(temp)))
        except BaseException as exc:  # (a Ctrl-C too: no temporary file stays)
            self._remove_path(temp)
            if isinstance(exc, FileNotFoundError):
                raise StorageError(f"the file {src} is missing; run 'localvault verify' to check the vault") from None
            if isinstance(exc, OSError):
                raise os_error(exc, temp) from None
            raise

    def link(self, source_bucket: str, source: str, bucket: str, relative: str, sha256: str | None = None) -> None:
        """Make ``bucket/relative`` hold the same bytes as ``source`` (:meth:`stage_from`, then :meth:`commit`)."""
        staged = self.stage_from(source_bucket, source, bucket, os.path.dirname(relative), sha256)
        try:
            self.commit(staged, relative)
        except BaseException:
            self.discard(staged)
            raise

    def remove(self, bucket: str, relative: str, *, prune: bool = True) -> None:
        """Delete a file if it exists (idempotent), and (with ``prune``) its job folder if now empty."""
        self._remove_path(self.full_path(bucket, relative))
        if prune:
            self.prune_folders(bucket, [os.path.dirname(relative)])

    def prune_folders(self, bucket: str, folders: Iterable[str]) -> None:
        """Remove the given workspace job folders that are empty (others are left alone)."""
        if not (self.local and bucket == WORKSPACE_BUCKET):
            return
        for folder in folders:
            try:
                os.rmdir(self.full_path(bucket, folder))
            except OSError:
                pass

    def _remove_path(self, path: str) -> None:
        try:
            if self.local:
                os.unlink(path)
            else:
                self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot remove {path}: {exc.strerror or exc}") from None

    # ---------------------------------------------------------------- read

    def open(self, bucket: str, relative: str) -> BinaryIO:
        """The file, to read; on the local disk, :class:`NotRegularFileError` for a named pipe, a device or a
        folder (opening a named pipe would wait for a writer, for ever)."""
        path = self.full_path(bucket, relative)
        try:
            return open_regular(path) if self.local else self.fs.open(path, "rb")
        except FileNotFoundError:
            raise StorageError(f"the file {bucket}/{relative} is missing; run 'localvault verify'") from None

    def exists(self, bucket: str, relative: str) -> bool:
        path = self.full_path(bucket, relative)
        return os.path.exists(path) if self.local else self.fs.exists(path)

    def is_file(self, bucket: str, relative: str) -> bool:
        """Whether a regular file is there (False: nothing, or a folder). On the local disk, an OSError when
        that cannot be told (no permission to look, a disk error), or :class:`NotRegularFileError` for a named
        pipe or a device: something is there, but no file to read."""
        path = self.full_path(bucket, relative)
        if not self.local:
            return bool(self.fs.isfile(path))
        try:
            mode = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False
        if stat.S_ISDIR(mode):  # a folder where the file should be: no file
            return False
        if not stat.S_ISREG(mode):
            raise not_regular(mode, path)
        return True

    def size(self, bucket: str, relative: str) -> int | None:
        path = self.full_path(bucket, relative)
        try:
            return os.stat(path).st_size if self.local else int(self.fs.size(path))
        except FileNotFoundError:
            return None

    def sha256(self, bucket: str, relative: str) -> str:
        with self.open(bucket, relative) as reader:
            return stream_digest(reader)

    def walk(self, bucket: str, on_error: Callable[[str, OSError], None] | None = None) -> Iterator[str]:
        """Every file in a bucket, as a path relative to the bucket (temp files included); ``on_error``: see
        :func:`walk_files` (local disk only)."""
        base = f"{self.root}/{bucket}"
        if self.local:
            yield from walk_files(base, on_error)
        else:
            for path in self.fs.find(base):
                yield path[len(base) + 1:] if path.startswith(base) else path.split(f"/{bucket}/", 1)[-1]
