"""localvault: a local-first vault for AI-generated images and videos.

Public API: :class:`Vault`, the models and the errors here; and, for what they name,
:mod:`localvault.sync` (``Remote``, ``status``, ``apply_schema``), :mod:`localvault.watch`
(``Watcher``), :mod:`localvault.metadata` (``read``) and :mod:`localvault.progress`
(``ProgressEvent``). Modules whose names start with ``_`` are internal.
"""

import logging
from typing import TYPE_CHECKING, Any

from .errors import (
    ConflictError,
    DuplicateError,
    EmptyFileError,
    FileTooLargeError,
    InvalidInputError,
    LocalVaultError,
    NotFoundError,
    OfflineError,
    SchemaVersionError,
    StorageError,
    SyncBusyError,
    SyncError,
    UnsupportedMediaError,
    VaultCorruptError,
)
from .models import AssetType, Collection, GenerationInfo, LibraryAsset, MediaType, Page, Visibility, WorkspaceAsset

if TYPE_CHECKING:
    from .vault import Vault

__version__ = "0.1.0"

# A library logs, it does not print: without a handler configured by the app, logging would show warnings on stderr.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Vault",
    "AssetType", "Collection", "GenerationInfo", "LibraryAsset", "MediaType", "Page", "Visibility", "WorkspaceAsset",
    "LocalVaultError", "NotFoundError", "InvalidInputError", "UnsupportedMediaError", "FileTooLargeError",
    "EmptyFileError", "DuplicateError", "ConflictError", "VaultCorruptError", "SchemaVersionError", "StorageError",
    "OfflineError", "SyncError", "SyncBusyError", "NetworkFilesystemWarning",
]


def __getattr__(name: str) -> Any:
    # Vault (and the database layer under it) is imported on first use, so that the import's worker
    # processes (localvault._examiners), which never open a vault, start without it.
    if name == "Vault":
        from .vault import Vault

        return Vault
    if name == "NetworkFilesystemWarning":
        from .db import NetworkFilesystemWarning

        return NetworkFilesystemWarning
    raise AttributeError(f"module 'localvault' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "Vault", "NetworkFilesystemWarning"})
