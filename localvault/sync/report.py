"""What a sync did: the report ``push`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Conflicts a report names (it counts them all): a sync after a long time offline may meet many.
MAX_NAMED_CONFLICTS = 1000


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
    #: The first :data:`MAX_NAMED_CONFLICTS` of them: ``{"table": ..., "id": ...}`` (this vault keeps its own
    #: version of each; the server's is the newer).
    conflicted: list[dict[str, str]] = field(default_factory=list)
    rejected: int = 0
    batches: int = 0
    pending_changes: int = 0  # queued when the sync began (status counts those left)
    #: The last sync went to another database or bucket: this one sent every row (as ``full`` does).
    remote_changed: bool = False
    seconds: float = 0.0
    #: This machine's clock minus the server's, in seconds (positive: ahead), measured as the sync began;
    #: see :func:`clock_warning`.
    clock_offset_seconds: float | None = None


#: A clock this far from the server's (either way) is worth a warning: see :func:`clock_warning`.
CLOCK_WARNING_SECONDS = 120.0


def clock_warning(offset: float | None) -> str | None:
    """What to tell the user of a clock ``offset`` seconds from the server's; None within
    :data:`CLOCK_WARNING_SECONDS` (or unknown).

    Last writer wins compares the times of the edits: a vault stamps its own with this machine's clock, the
    web app and other rigs with theirs. A clock running ahead makes this vault's edits beat newer ones made
    elsewhere; one running behind makes them lose to older ones.
    """
    if offset is None or abs(offset) < CLOCK_WARNING_SECONDS:
        return None
    span = _span(abs(offset))
    if offset > 0:
        effect = f"an edit made here beats edits of the same entry made elsewhere up to {span} after it"
    else:
        effect = f"an edit made here loses to edits of the same entry made elsewhere up to {span} before it"
    return (f"this machine's clock is {span} {'ahead of' if offset > 0 else 'behind'} the server's: last writer "
            f"wins compares the times of the edits, so {effect}; set this machine's clock (NTP)")


def _span(seconds: float) -> str:
    """A length of time as people say it, its two largest units: '3 days 4 h', '2 h 5 min', '3 h', '4 min 10 s'."""
    whole = round(seconds)
    units = [(whole // 86400, "day"), (whole % 86400 // 3600, "h"), (whole % 3600 // 60, "min"), (whole % 60, "s")]
    first = next((i for i, (count, _unit) in enumerate(units) if count), len(units))
    return " ".join(f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''}"
                    for count, unit in units[first:first + 2] if count) or "0 s"


def name_conflicts(report: SyncReport, rows: list[tuple[str, str]]) -> None:
    """Count conflicts of (table, row id) in ``report``, naming them up to :data:`MAX_NAMED_CONFLICTS`."""
    report.conflicts += len(rows)
    room = MAX_NAMED_CONFLICTS - len(report.conflicted)
    report.conflicted += [{"table": table, "id": row_id} for table, row_id in rows[:max(room, 0)]]
