"""What moves through an import's pipeline (see :mod:`localvault.importer`): chunks of files being
examined, batches being staged and committed, and the helpers that run work on them."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._examine import Examined
from ._intake import Candidate
from .files import StagedFile
from .import_report import ImportReport

T = TypeVar("T")


@dataclass
class Chunk:
    """Candidates handed to an examining worker together."""

    files: list[Candidate]
    work: Future[list[Examined | Exception]]
    held: int  # bytes of its files the pipeline keeps in memory


@dataclass
class Batch:
    """Examined files committed together: their chunks, each with its staging."""

    chunks: list[tuple[list[Examined], Future[list[StagedFile | Exception]]]] = field(default_factory=list)
    files: int = 0
    held: int = 0  # bytes of its files held in memory (small ones only)
    bytes: int = 0  # bytes of all its files: staged, not yet committed
    commit: Future[ImportReport] | None = None

    def add(self, examined: list[Examined], staging: Future[list[StagedFile | Exception]], held: int) -> None:
        """Add examined files with their staging, and the bytes of them held in memory."""
        self.chunks.append((examined, staging))
        self.files += len(examined)
        self.held += held
        self.bytes += sum(e.size for e in examined)


def done_future(value: T) -> Future[T]:
    """A future that already holds ``value``."""
    future: Future[T] = Future()
    future.set_result(value)
    return future


def each(work: Callable[..., T], items: list[Any], *args: Any) -> list[T | Exception]:
    """``work(item, *args)`` for each item, in a worker: a failure is that item's result, not the chunk's."""
    out: list[T | Exception] = []
    for item in items:
        try:
            out.append(work(item, *args))
        except Exception as exc:  # reported as that file's refusal
            out.append(exc)
    return out


def to_the_end(cleanup: Callable[[], object]) -> None:
    """Run a cleanup to its end even if Ctrl-C is pressed again meanwhile, then let that Ctrl-C through.

    The cleanup is short (the chunks under way, one commit) and may run again
    from the start: a second Ctrl-C cutting it short would leave temporary files.
    """
    again: KeyboardInterrupt | None = None
    while True:
        try:
            cleanup()
            break
        except KeyboardInterrupt as exc:
            again = exc
    if again is not None:
        raise again


def committed_well(batch: Batch) -> bool:
    """Whether a batch's commit ended well, once it has ended (a Ctrl-C meanwhile waits again: see to_the_end)."""
    commit = batch.commit
    if commit is None:
        return False
    to_the_end(lambda: futures.wait([commit]))  # (the wait raises nothing of the commit's own)
    return not commit.cancelled() and commit.exception() is None
