"""What SQLite's errors say of a vault's database: damaged, or not a database at all."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .errors import VaultCorruptError


def corruption_error(exc: sqlite3.DatabaseError, path: Path) -> VaultCorruptError | None:
    """The VaultCorruptError a damaged (or foreign) database file's error stands for; None for another error."""
    if is_corruption(exc):
        return VaultCorruptError(f"{path} is not a readable localvault database ({exc}); restore it from a backup "
                                 "(the files in the buckets are not affected)")
    return None


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite said the file is damaged, or not a database (SQLITE_CORRUPT, SQLITE_NOTADB)."""
    code = getattr(exc, "sqlite_errorcode", None)  # (Python 3.11 and later)
    if code is not None:
        return code & 0xFF in (11, 26)
    text = str(exc)
    return not isinstance(exc, sqlite3.OperationalError) and (
        "not a database" in text or "malformed" in text or "file is encrypted" in text)
