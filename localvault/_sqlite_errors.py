"""What SQLite's errors say of a vault's database: damaged, or not a database at all."""

from __future__ import annotations

import functools
import inspect
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, Protocol, TypeVar

from .errors import LocalVaultError, VaultCorruptError

Class = TypeVar("Class", bound=type)
P = ParamSpec("P")
R = TypeVar("R")


class _Translates(Protocol):
    def vault_error(self, exc: sqlite3.DatabaseError) -> LocalVaultError | None: ...


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


_CALLERS_OWN = "_localvault_callers_own"


@contextmanager
def callers_own_errors() -> Iterator[None]:
    """Around a call of the caller's callback (a progress report): an SQLite error it raises is about the
    caller's own database, and reaches the caller as it is, not as the vault's."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        setattr(exc, _CALLERS_OWN, True)
        raise


def is_callers_own(exc: sqlite3.DatabaseError) -> bool:
    """Whether the error came from the caller's callback (see :func:`callers_own_errors`)."""
    return bool(getattr(exc, _CALLERS_OWN, False))


def raising_vault_errors(database: str) -> Callable[[Class], Class]:
    """A class decorator: what SQLite raises inside the class's public methods reaches their callers as the
    LocalVaultError it stands for (a read that meets a damaged page: VaultCorruptError), through the
    ``vault_error`` of the Database at ``self.<database>``. A bug's error (a broken constraint) stays raw."""
    def decorate(cls: Class) -> Class:
        for name, member in list(vars(cls).items()):
            if not name.startswith("_") and inspect.isfunction(member):  # (not the classmethods that open a vault)
                setattr(cls, name, _raising_vault_errors(member, database))
        return cls
    return decorate


def function_raising_vault_errors(database: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """The same for a public function whose first argument holds the Database (``vault``: ``"db"``)."""
    return functools.partial(_raising_vault_errors, database=database)


def _raising_vault_errors(function: Callable[P, R], database: str) -> Callable[P, R]:
    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            db: _Translates = getattr(args[0], database)
            if (translated := db.vault_error(exc)) is None:
                raise
            raise translated from exc
    return call
