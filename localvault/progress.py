"""How library code reports progress: a callback, never a print.

A long operation takes an optional ``progress`` callable and calls it with a
:class:`ProgressEvent` now and then; the CLI turns those into progress bars.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long operation.

    ``total`` is None while unknown. ``advance``/``bytes_advance`` are the work
    done since the previous event (so the receiver can just add them up).
    """

    stage: str
    advance: int = 0
    total: Optional[int] = None
    bytes_advance: int = 0
    bytes_total: Optional[int] = None
    item: Optional[str] = None
    message: Optional[str] = None


ProgressCallback = Callable[[ProgressEvent], None]


def report(progress: Optional[ProgressCallback], stage: str, **fields: object) -> None:
    """Call ``progress`` with a new event if a callback was given."""
    if progress is not None:
        progress(ProgressEvent(stage=stage, **fields))  # type: ignore[arg-type]
