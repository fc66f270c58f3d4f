"""What an import did (:class:`ImportReport`), file by file; returned by imports and the watcher."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImportedFile:
    """One file that became a workspace asset."""

    source: str
    asset_id: str
    job_id: str
    asset_index: int
    sha256: str
    size: int
    #: Where its prompt, seed and model came from (``a1111``, ``comfyui``, ``sidecar``…; ``none``: placeholders).
    metadata_source: str = ""


@dataclass
class ImportReport:
    """What an import did: assets made, duplicates skipped, files refused (path → reason)."""

    imported: list[ImportedFile] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    ignored: int = 0
    bytes_imported: int = 0
    seconds: float = 0.0
    #: Refused files whose refusal may pass (they could not be written into the vault, or their batch could not
    #: be committed: disk full or read-only, database busy); the watcher tries them again.
    retryable: list[str] = field(default_factory=list)
    #: Sub-folders the import did not look in: it was not recursive (or they hold a vault).
    folders_not_entered: int = 0
    #: Duplicates whose sidecar (come after the first copy was taken without metadata) filled that asset's
    #: placeholders: path -> the asset's id.
    filled: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: ``12 imported, 3 skipped as duplicates, 1 refused``."""
        return summary_line(len(self.imported), len(self.duplicates), len(self.refused))

    def merge(self, other: ImportReport) -> None:
        """Add ``other``'s results to this report."""
        self.imported += other.imported
        self.duplicates += other.duplicates
        self.refused.update(other.refused)
        for path in [*(item.source for item in other.imported), *other.duplicates]:
            self.refused.pop(path, None)  # refused before (a retry, or a file taken before it was whole), now taken
        self.retryable = list(dict.fromkeys([*(p for p in self.retryable if p in self.refused), *other.retryable]))
        self.ignored += other.ignored
        self.folders_not_entered += other.folders_not_entered
        self.filled.update(other.filled)
        self.bytes_imported += other.bytes_imported
        self.seconds += other.seconds


def summary_line(imported: int, duplicates: int, refused: int) -> str:
    return f"{imported} imported, {duplicates} skipped as duplicate{'' if duplicates == 1 else 's'}, {refused} refused"


__all__ = ["ImportReport", "ImportedFile", "summary_line"]


class ImportInterrupted(KeyboardInterrupt):
    """A Ctrl-C (or the CLI's SIGTERM) that stopped an import: a :class:`KeyboardInterrupt`, with ``report``,
    what the import had committed before the stop (those files stay in the vault; the same import again takes
    the rest). Files under way were finished or removed, never left as temporary files."""

    def __init__(self, report: ImportReport) -> None:
        super().__init__(f"the import was stopped after {len(report.imported)} file(s) were committed")
        self.report = report
