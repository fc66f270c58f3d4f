"""What a sync did: the report ``push`` returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SyncReport:
    """What a sync did (or, with dry_run, would do)."""

    dry_run: bool = False
    rows_written: int = 0
    rows_deleted: int = 0
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    files_skipped: int = 0
    objects_deleted: int = 0
    #: Changes the server kept its own newer state against: a row edited, or deleted, there after the change.
    conflicts: int = 0
    rejected: int = 0
    batches: int = 0
    pending_changes: int = 0  # queued when the sync began (status counts those left)
    seconds: float = 0.0
