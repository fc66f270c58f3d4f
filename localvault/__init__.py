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

if TYPE_CHECKING:
    from ._cleanup import CleanupReport
    from .db import NetworkFilesystemWarning
    from .import_report import ImportReport
    from .models import (
        AssetType,
        Collection,
        GenerationInfo,
        LibraryAsset,
        MediaType,
        Page,
        Visibility,
        VisibilityName,
        WorkspaceAsset,
    )
    from .vault import Vault
    from .verify import VerifyReport

__version__ = "0.1.0"

# A library logs, it does not print: without a handler configured by the app, logging would show warnings on stderr.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Vault",
    "AssetType", "Collection", "GenerationInfo", "LibraryAsset", "MediaType", "Page", "Visibility", "VisibilityName",
    "WorkspaceAsset",
    "LocalVaultError", "NotFoundError", "InvalidInputError", "UnsupportedMediaError", "FileTooLargeError",
    "EmptyFileError", "DuplicateError", "ConflictError", "VaultCorruptError", "SchemaVersionError", "StorageError",
    "OfflineError", "SyncError", "SyncBusyError", "NetworkFilesystemWarning",
    "CleanupReport", "ImportReport", "VerifyReport",
]

#: Imported on first use: Vault (and the database layer under it) and what comes with it, so that the
#: import's worker processes (localvault._examiners), which never open a vault, start without them; the models
#: (pydantic), so that the command's entry point (localvault.cli.run) is loaded before them.
_LAZY = {"Vault": "vault", "NetworkFilesystemWarning": "db", "CleanupReport": "_cleanup",
         "ImportReport": "import_report", "VerifyReport": "verify",
         **{name: "models" for name in ("AssetType", "Collection", "GenerationInfo", "LibraryAsset", "MediaType",
                                        "Page", "Visibility", "VisibilityName", "WorkspaceAsset")}}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'localvault' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
