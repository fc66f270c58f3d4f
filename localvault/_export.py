"""An asset's file copied out of the vault: the bytes its row describes, or nothing, and never over a file."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import BinaryIO

from ._disk import fsync_path, os_error
from ._durable import write_durably
from .errors import DuplicateError, StorageError
from .files import FileStore


class _Checked:
    """A reader of the vault's file that fails the copy, before it is published, unless the bytes are the
    row's: a file rewritten in place, damaged, or swapped for a link to another file (or to /dev/zero, which
    would be copied without end) is not exported."""

    def __init__(self, reader: BinaryIO, name: str, sha256: str, size: int) -> None:
        self._reader, self._name, self._sha256, self._size = reader, name, sha256, size
        self._digest = hashlib.sha256()
        self._read = 0

    def read(self, n: int = -1) -> bytes:
        chunk = self._reader.read(n)
        self._read += len(chunk)
        self._digest.update(chunk)
        if self._read > self._size or (not chunk and (self._read, self._digest.hexdigest()) != (self._size,
                                                                                                self._sha256)):
            raise StorageError(f"{self._name} no longer holds the bytes it was stored with; nothing was exported; "
                               "run 'localvault verify' to find the damaged files")
        return chunk


def export_file(files: FileStore, bucket: str, relative: str, sha256: str, size: int, destination: Path) -> None:
    """Copy a file out of the vault to a local path that must not exist (DuplicateError), atomically, checked
    against its row's ``sha256`` and ``size`` (StorageError)."""
    try:
        reader = files.open(bucket, relative)
    except StorageError:  # missing: says so, and what to do
        raise
    except OSError as exc:  # the vault's file, not the destination
        raise StorageError(f"cannot read {bucket}/{relative}: {exc.strerror or exc}; run 'localvault verify'"
                           ) from None
    try:
        with reader:
            write_durably(_Checked(reader, f"{bucket}/{relative}", sha256, size), destination, replace=False)
    except FileExistsError:  # made meanwhile (by another export, say): never overwritten
        raise DuplicateError(f"{destination} already exists; choose another destination") from None
    except StorageError:  # (an OSError too) the vault's file failed its check: said as it is
        raise
    except OSError as exc:
        raise os_error(exc, destination) from None
    with contextlib.suppress(OSError):  # best effort: a folder one may write to but not list cannot be opened
        fsync_path(destination.parent)
