"""The vault's timestamps: UTC ISO-8601 text with milliseconds (``2026-11-25T02:04:35.123Z``), which sorts as the
moments do."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


def utc_now() -> str:
    """Now as UTC ISO-8601 text with milliseconds, the vault's timestamp format."""
    return format_time(datetime.now(timezone.utc))


def format_time(moment: datetime) -> str:
    """``moment`` as the vault's timestamp text (UTC, milliseconds), which sorts as the moments do.

    OverflowError for a moment that has no UTC time in ``datetime``'s range.
    """
    moment = moment.astimezone(timezone.utc)
    # The year always has 4 digits: glibc's %Y writes "900", which sorts after "2026".
    return f"{moment.year:04d}-" + moment.strftime("%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def utc_in(delta: timedelta) -> str:
    """``delta`` from now, as the vault's timestamp text."""
    return format_time(datetime.now(timezone.utc) + delta)
