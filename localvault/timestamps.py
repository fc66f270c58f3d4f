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


def parse_time(text: str) -> datetime:
    """A vault timestamp's text as an aware ``datetime`` (ValueError for text that is not one)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def utc_in(delta: timedelta) -> str:
    """``delta`` from now, as the vault's timestamp text."""
    return format_time(datetime.now(timezone.utc) + delta)


#: How far in the future a recorded time may be (another machine's clock, on a vault shared over a network) before
#: it counts as the mark of a clock set back since.
CLOCK_SLACK = timedelta(minutes=5)


def due(last: str | None, interval: timedelta) -> bool:
    """Whether ``interval`` has passed since ``last`` (a vault timestamp's text; None, or text that cannot be read:
    never done). A ``last`` in the future marks a clock set back since: counting from it would put the work off
    until the clock caught up (a year, for a clock that was a year ahead), so it is due."""
    try:
        done = parse_time(last) if last else None
    except ValueError:
        done = None
    if done is None or done.tzinfo is None:
        return True
    now = datetime.now(timezone.utc)
    return done < now - interval or done > now + CLOCK_SLACK
