"""How library code reports progress: a callback, never a print.

A long operation takes an optional ``progress`` callable and calls it with a
:class:`ProgressEvent` now and then; the CLI turns those into progress bars.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._sqlite_errors import callers_own_errors


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long operation.

    ``total`` is None while unknown. ``advance``/``bytes_advance`` are the work
    done since the previous event (so the receiver can just add them up).
    """

    stage: str
    advance: int = 0
    total: int | None = None
    bytes_advance: int = 0
    bytes_total: int | None = None
    item: str | None = None
    message: str | None = None


ProgressCallback = Callable[[ProgressEvent], None]


def report(progress: ProgressCallback | None, stage: str, **fields: object) -> None:
    """Call ``progress`` with a new event if a callback was given."""
    if progress is not None:
        with callers_own_errors():
            progress(ProgressEvent(stage=stage, **fields))  # type: ignore[arg-type]
