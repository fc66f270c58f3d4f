"""localvault: a local-first vault for AI-generated images and videos.

Public API: :class:`Vault`, the models and the errors. Everything else is internal.
"""

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
from .vault import Vault

__version__ = "0.1.0"

__all__ = [
    "Vault",
    "AssetType", "Collection", "GenerationInfo", "LibraryAsset", "MediaType", "Page", "Visibility", "WorkspaceAsset",
    "LocalVaultError", "NotFoundError", "InvalidInputError", "UnsupportedMediaError", "FileTooLargeError",
    "EmptyFileError", "DuplicateError", "ConflictError", "VaultCorruptError", "SchemaVersionError", "StorageError",
    "OfflineError", "SyncError", "SyncBusyError",
]
