"""The one error hierarchy of localvault.

Every error a public call raises derives from :class:`LocalVaultError`; its
message says what was wrong and what to do about it.
"""

from __future__ import annotations


class LocalVaultError(Exception):
    """Base of every error localvault raises on purpose."""

    #: Exit code the CLI uses for this kind of error.
    exit_code: int = 1


class NotFoundError(LocalVaultError):
    """The asset, collection or vault does not exist (or belongs to another user)."""

    exit_code = 2


class InvalidInputError(LocalVaultError, ValueError):
    """An argument is malformed: a bad UUID, a negative seed, an over-long prompt…"""

    exit_code = 3


class UnsupportedMediaError(InvalidInputError):
    """The file is not a JPEG, PNG, WebP or MP4, or its name disagrees with its bytes."""


class FileTooLargeError(InvalidInputError):
    """The file is larger than the 1 GiB limit."""


class EmptyFileError(InvalidInputError):
    """The file has no bytes."""


class DuplicateError(LocalVaultError):
    """The thing already exists (same file for this user, same collection name…)."""

    exit_code = 4


class ConflictError(LocalVaultError):
    """The change clashes with the current state (for example a concurrent edit)."""

    exit_code = 5


class VaultCorruptError(LocalVaultError):
    """vault.db cannot be read as a localvault database."""

    exit_code = 6


class SchemaVersionError(LocalVaultError):
    """The database was written by a newer localvault (or the server has another schema)."""

    exit_code = 7


class StorageError(LocalVaultError, OSError):
    """A file could not be written or read (disk full, read-only folder…)."""

    exit_code = 8


class OfflineError(LocalVaultError):
    """The sync server or bucket cannot be reached; try again when online."""

    exit_code = 10


class SyncError(LocalVaultError):
    """The sync failed for a reason other than being offline."""

    exit_code = 11


class SyncBusyError(SyncError):
    """Another sync of this vault is running."""

    exit_code = 12


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type), for one-line error reports."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
