"""What the watcher reports and keeps between events (see :mod:`localvault.watch`): its events, the files it
handled lately, and its running report. What it keeps stays bounded over a watch of weeks."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .import_report import ImportReport, summary_line

#: Files of each kind (imported, duplicate, refused) the watcher's report lists; the rest are counted only.
REPORT_KEEPS = 10_000
#: Seconds a handled file is remembered: a late event for it (unchanged) is then not taken for a new file.
REMEMBER_SECONDS = 600.0


@dataclass(frozen=True)
class WatchEvent:
    """What the watcher did: ``kind`` is imported, duplicate, refused, error, folder_gone, folder_back,
    folder_not_entered (a sub-folder made or moved into a watch that is not recursive) or sidecar_read (a
    sidecar that came after its file was taken filled the asset's prompt, seed and model)."""

    kind: str
    path: str
    at: float
    asset_id: str | None = None
    job_id: str | None = None
    message: str | None = None


@dataclass
class WatchReport(ImportReport):
    """The watcher's running report: every file counted, the most recent :data:`REPORT_KEEPS` of each kind
    listed (a watch runs for weeks: a full list would grow by ~800 bytes a file)."""

    imported_total: int = 0
    duplicates_total: int = 0
    refused_forgotten: int = 0  # refusals dropped from ``refused`` to keep it short, still counted
    #: Files the catch-up passed over: written more than the workspace's lifetime (7 days) ago, they would have
    #: expired already, and each restart would take them again (``localvault import`` takes them).
    too_old: int = 0
    #: The sub-folders counted in ``folders_not_entered``: each once, however often met.
    _folders_not_entered: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    def not_entered(self, folder: str) -> bool:
        """Count a sub-folder not looked in (each catch-up's scan, or its event, meets it): whether it is new."""
        if folder in self._folders_not_entered:
            return False
        self._folders_not_entered.add(folder)
        self.folders_not_entered += 1
        return True

    @property
    def refused_total(self) -> int:
        return len(self.refused) + self.refused_forgotten

    def summary(self) -> str:
        return summary_line(self.imported_total, self.duplicates_total, self.refused_total)

    def merge(self, other: ImportReport) -> None:
        super().merge(other)
        self.imported_total += len(other.imported)
        self.duplicates_total += len(other.duplicates)
        del self.imported[:-REPORT_KEEPS]
        del self.duplicates[:-REPORT_KEEPS]
        while len(self.refused) > REPORT_KEEPS:
            del self.refused[next(iter(self.refused))]
            self.refused_forgotten += 1


class HandledFiles:
    """The files handled in the last :data:`REMEMBER_SECONDS`, oldest first, as they were when taken.

    An event about a file unchanged since (same size and mtime) is not taken
    for a new file. A refused file is new again when its ctime moves too: a
    chmod changes nothing else. The ctime kept is the one from before the
    import, so that a fix made while the import runs still counts.
    """

    def __init__(self) -> None:
        self._files: dict[str, tuple[int, int, int, bool, float]] = {}  # (size, mtime_ns, ctime_ns, refused, when)

    def __len__(self) -> int:
        return len(self._files)

    def take_new(self, paths: Iterable[str]) -> list[str]:
        """The paths (once each) that are new or changed since handled; they are remembered as handled now."""
        now = time.monotonic()
        self._forget_before(now - REMEMBER_SECONDS)
        fresh: list[str] = []
        for path in dict.fromkeys(paths):
            try:
                st = os.stat(path)
            except OSError:
                continue  # gone already (a temp file renamed away, or moved by us)
            known = self._files.get(path)
            if known is None or known[:2] != (st.st_size, st.st_mtime_ns) or (known[3] and known[2] != st.st_ctime_ns):
                self._files.pop(path, None)  # (back in at the end: the newest)
                self._files[path] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, False, now)
                fresh.append(path)
        return fresh

    def forget(self, paths: Iterable[str]) -> None:
        """Forget paths: the next event about them takes them again."""
        for path in paths:
            self._files.pop(path, None)

    def mark_refused(self, paths: Iterable[str]) -> None:
        for path in paths:
            known = self._files.get(path)
            if known is not None:
                self._files[path] = (*known[:3], True, known[4])

    def clear(self) -> None:
        self._files.clear()

    def _forget_before(self, cutoff: float) -> None:
        while self._files:
            oldest = next(iter(self._files))
            if self._files[oldest][4] >= cutoff:
                return
            del self._files[oldest]


__all__ = ["WatchReport", "HandledFiles", "REPORT_KEEPS", "REMEMBER_SECONDS"]
