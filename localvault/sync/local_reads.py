"""Reading the vault's own files for a push: their read errors are the vault's, and their bytes must be their
rows' (the sha256 each row records)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .._disk import file_digest as file_digest  # (the sync's callers import it from here)
from ..errors import SyncError


@contextmanager
def reading(local: Path) -> Iterator[None]:
    """A local file that cannot be read is the vault's problem, not the network's: a SyncError at once.

    Without this, an ``OSError`` such as EIO from a failing disk would be
    retried as a lost connection and then reported as "offline". A file gone
    stays ``FileNotFoundError`` (the engine tells a deleted row from a lost file).
    """
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        what = "check its permissions" if isinstance(exc, PermissionError) else \
            "the disk may be failing: run 'localvault verify' and check the disk"
        raise SyncError(f"cannot read {local} ({exc.strerror or exc}); {what}") from None


def check_sha256(local: Path, actual: str, expected: str) -> None:
    """SyncError unless the bytes read from ``local`` (``actual``) are its row's (``expected``)."""
    if actual != expected:
        raise SyncError(f"{local} no longer matches the sha256 its row records (damaged or changed on disk); "
                        "nothing of it was kept in the bucket. Run 'localvault verify', then restore the file "
                        "or delete the asset")
