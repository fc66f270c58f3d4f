"""Batch import of a rig's output folder into the workspace (``localvault import``).

Pipeline: scan the folder (regular files with a known extension; hidden and
temporary names ignored; links leading outside refused), sort by
``(mtime, path)``. Then:

1. examining workers (one per core) read each file once and, from those
   bytes, check its type and wholeness, read its metadata and hash it;
2. the calling thread, in order, gives each file its job (grouping needs the
   order) and drops duplicates;
3. staging threads write it (or hard-link it) under a temporary name into its
   job's folder, without fsync;
4. every ``BATCH_SIZE`` files (or ``BATCH_BYTES``) a committer thread, which
   alone touches SQLite while the import runs, commits the batch (while the
   next one is prepared): in one ``BEGIN IMMEDIATE`` transaction it renames
   the files to their final names, makes them durable (one ``syncfs``, or an
   fsync per file and folder), then inserts their rows.

A row therefore never points at a missing or unsynced file. A crash leaves at
worst temporary files, which ``localvault verify --repair`` removes, or files
renamed into place before their rows were committed: each batch notes its
files first (:mod:`localvault._write_intents`), and the next opening of the
vault for writing removes those no row uses.
``--move`` deletes a source only after its row is committed.

A big import (:data:`PROCESS_MIN_FILES` files or more, on two cores or more,
local disk) runs steps 1 and 3 together in worker processes
(:mod:`localvault._examiners`), which stage each new file in the user's
folder; the commit then renames it into its job's folder. Threads alone
would leave all but one core idle: the examining is Python work, and holds
the GIL. Should the workers fail to start, the import goes on with threads.

Which files are taken and how they are grouped into jobs: :mod:`localvault._intake`; what moves through
the pipeline: :mod:`localvault._import_pipeline`; how a batch is committed: :mod:`localvault._import_commit`.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from . import models
from ._examine import PLACEHOLDERS, Examined, examine, row_values, stage
from ._examiners import ExaminerProcesses, WorkerSetup, WorkerStartError, known_hashes
from ._import_commit import commit_batch, discard_quietly, notices, refuse
from ._import_pipeline import Batch, Chunk, committed_well, done_future, each, to_the_end
from ._intake import Candidate, JobGrouper, check_folder, check_path, is_candidate_name, is_ignored_name, scan
from ._late_sidecars import RowValues, came_with_its_file, fill_duplicates
from .db import Database
from .errors import InvalidInputError, StorageError
from .files import FileStore, StagedFile
from .import_report import ImportedFile, ImportInterrupted, ImportReport
from .metadata.sidecar import UNREADABLE
from .models import GenerationInfo
from .progress import ProgressCallback, report
from .workspace import Workspace

log = logging.getLogger(__name__)

Mode = Literal["copy", "move", "link"]
MODES = ("copy", "move", "link")
#: Files a batch commits in one transaction (after one syncfs, or fsyncs, of the whole batch). Each
#: commit rewrites the index pages its random keys (sha256, job) touch: 500 rather than 200 a batch
#: made 10,000-file imports 10-25 % faster (measured, fourth session).
BATCH_SIZE = 500
#: ... or fewer, when their bytes reach this.
BATCH_BYTES = 48 * 1024 * 1024
#: Files up to this size are read once into memory (check, metadata, hash, then write); larger ones are streamed.
IN_MEMORY_BYTES = 4 * 1024 * 1024
#: Bytes of files read but not yet committed that the pipeline may hold in memory (plus one file).
WINDOW_BYTES = 96 * 1024 * 1024
#: Threads writing staged files.
STAGING_THREADS = 8
#: How many times the copies of a refused file are offered again, each round taking the next copy as the first.
REOFFERS = 3
#: Files handed between threads at a time.
CHUNK_FILES = 16
#: Imports of at least this many files load the user's hashes first (see import_candidates).
PRELOAD_MIN_FILES = 64
#: Imports of at least this many files examine and stage them in worker processes (see import_candidates).
PROCESS_MIN_FILES = 1000


def checked_options(*, mode: Mode, model: str | None, prompt: str | None, workers: int | None) -> dict[str, Any]:
    """The options an :class:`Importer` takes, checked (model and prompt cleaned); InvalidInputError for a bad one."""
    if mode not in MODES:
        raise InvalidInputError(f"import mode {mode!r} is unknown; use one of {', '.join(MODES)}")
    if workers is not None:
        models.check_whole_number(workers, "workers", 1, 64, hint=" (leave it out for one per core)")
    return {"mode": mode, "model": models.check_model(model) if model is not None else None,
            "prompt": models.check_prompt(prompt) if prompt is not None else None, "workers": workers}


class Importer:
    """Imports lists of files into one user's workspace; reusable (the watcher keeps one).

    While :meth:`import_candidates` runs, only its committer thread uses the
    vault's database connection.
    """

    def __init__(self, db: Database, files: FileStore, user_id: str, *, mode: Mode = "copy",
                 model: str | None = None, prompt: str | None = None, workers: int | None = None,
                 batch_size: int = BATCH_SIZE, grouper: JobGrouper | None = None) -> None:
        options = checked_options(mode=mode, model=model, prompt=prompt, workers=workers)
        db.refuse_if_readonly("import files")  # (before anything is staged: each file was, then refused)
        self.db, self.files, self.user_id, self.mode = db, files, user_id, options["mode"]
        self.model, self.prompt = options["model"], options["prompt"]
        # One examining worker per core: that work holds the GIL often enough that more threads
        # only contend (measured: 8 threads were ~40% slower than 2 on 2 cores).
        self.workers = options["workers"] or max(1, min(8, os.cpu_count() or 2))
        self.batch_size = batch_size
        self.grouper = grouper or JobGrouper(user_id)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="localvault-import")
        # Writing files waits on the disk (folder and inode creation can take milliseconds each on a
        # busy disk), so it has threads of its own, more of them, which mostly sleep in system calls.
        self._io = ThreadPoolExecutor(STAGING_THREADS, thread_name_prefix="localvault-stage")
        self._offers_left = REOFFERS  # rounds of copies offered again (see _offer_copies_again)
        # One thread commits batches (the only one touching SQLite while an import runs).
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="localvault-commit")
        self.workspace = Workspace(db, files, user_id)
        self._placeholders = row_values(GenerationInfo(), self.prompt, self.model)  # a file without metadata's

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=True)
        self._io.shutdown(wait=True)
        self._committer.shutdown(wait=True)

    def __enter__(self) -> Importer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _known(self) -> set[str]:
        return known_hashes(self.db.conn, self.user_id)

    # ------------------------------------------------------------- workers

    def _stage(self, ready: Examined) -> StagedFile:
        """Write (or link) a file under a temporary name into its job's folder, without fsync."""
        return stage(self.files, ready, self.mode, f"{self.user_id}/{ready.job_id}")

    def _start_examiners(self, total: int | None) -> ExaminerProcesses | None:
        """Worker processes for a big import on several cores; None where threads will do (or must)."""
        if (total or 0) < PROCESS_MIN_FILES or self.workers < 2 or not self.files.local:
            return None
        setup = WorkerSetup(self.files.root, str(self.db.path), self.user_id, self.mode, IN_MEMORY_BYTES, self.prompt,
                            self.model)
        try:
            return ExaminerProcesses(self.workers, setup)
        except WorkerStartError as exc:
            notices.warning("%s; importing with threads instead", exc)
            return None

    # ---------------------------------------------------------- main loop

    def _examine(self, candidate: Candidate, known: set[str]) -> Examined:
        return examine(candidate, known, in_memory_bytes=IN_MEMORY_BYTES, prompt=self.prompt, model=self.model)

    def import_candidates(self, candidates: Iterable[Candidate], *, total: int | None = None,
                          progress: ProgressCallback | None = None) -> ImportReport:
        """Import candidates (in the order given, which grouping relies on); never raises for one bad file.

        Files travel in chunks of :data:`CHUNK_FILES` (one hand-over between
        threads per chunk, not per file). Workers examine chunks ahead of this
        thread; this thread gives each file its job, in order, and hands the
        chunk to the staging threads; a committer thread commits each batch
        while the next one is prepared. Memory held is bounded by
        :data:`WINDOW_BYTES`.
        """
        started = time.perf_counter()
        result = ImportReport()
        examiners: ExaminerProcesses | None = None
        use_examiners = False
        known: set[str] = set()
        first_copy: dict[str, str] = {}  # sha256 -> the path this import takes it from
        later_copies: dict[str, list[Candidate]] = {}  # sha256 -> its other copies in this import
        sidecars: dict[str, tuple[str, RowValues]] = {}  # a duplicate with a sidecar -> (sha256, its row values)
        source = iter(candidates)
        lookahead = max(self.workers * 4, self.batch_size * 3)
        window: deque[Chunk] = deque()  # being examined, in order
        batch = Batch()  # examined, being staged
        committing: Batch | None = None  # being committed (one at a time)
        settling: Batch | None = None  # the commit being waited for (a Ctrl-C may land in that wait)
        report(progress, "import", total=total)

        def held() -> int:
            """Bytes of in-memory files read ahead, staged or being committed."""
            return (sum(c.held for c in window) + batch.held
                    + (committing.held if committing is not None else 0))

        def refill() -> None:
            while sum(len(c.files) for c in window) < lookahead and (not window or held() < WINDOW_BYTES):
                files = list(itertools.islice(source, min(CHUNK_FILES, self.batch_size)))
                if not files:
                    return
                work = (examiners.submit(files) if examiners is not None and use_examiners
                        else self._pool.submit(each, self._examine, files, known))
                window.append(Chunk(files, work, sum(_held(c) for c in files)))

        def settle() -> None:
            """Wait for the commit in flight and merge what it did."""
            nonlocal committing, settling
            if committing is not None:
                done, committing = committing, None
                settling = done
                outcome = done.commit.result()  # type: ignore[union-attr]
                settling = None  # (before the merge: a Ctrl-C between the two must not count it twice)
                result.merge(outcome)

        def commit() -> None:
            nonlocal batch, committing
            settle()  # one commit at a time: it runs while the next batch is examined and staged
            batch.commit = self._committer.submit(self._commit, batch)
            committing, batch = batch, Batch()

        try:
            # A big import examines and stages in worker processes, which look up the user's hashes themselves.
            examiners = self._start_examiners(total)
            use_examiners = examiners is not None
            if not use_examiners and (total or 0) >= PRELOAD_MIN_FILES:
                # Hashes this user has: loaded up front for big imports (a duplicate is then never written);
                # a small batch (the watcher's) relies on the check inside the commit instead.
                known = self._known()
            refill()
            while window:
                chunk = window[0]  # still in the window (for _abandon) until the batch holds its files
                try:
                    outcomes = chunk.work.result()
                except WorkerStartError as exc:
                    if use_examiners:  # this machine cannot run the workers: threads from now on
                        notices.warning("%s; importing with threads instead", exc)
                        use_examiners, known = False, self._known()
                    outcomes = each(self._examine, chunk.files, known)  # (chunks sent before: examined here)
                except StorageError as exc:  # a worker died on these files (it is replaced for the next ones)
                    outcomes = [exc] * len(chunk.files)
                to_stage: list[Examined] = []
                for candidate, examined in zip(chunk.files, outcomes, strict=True):
                    if isinstance(examined, Exception):  # (from a worker process: its staging too)
                        refuse(result, candidate.path, examined)
                        log.info("refused %s: %s", candidate.path, result.refused[candidate.path])
                        continue
                    if unreadable := examined.info.settings.get(UNREADABLE):
                        log.warning("%s: its sidecar could not be read (%s); what it says is not in the vault",
                                    candidate.path, unreadable)
                    examined.job_id = self.grouper.job_for(examined.info, examined.sha256, candidate.mtime,
                                                           examined.group)
                    if examined.sha256 in first_copy or examined.values is None:
                        result.duplicates.append(candidate.path)
                        if examined.values is None and came_with_its_file(candidate.path, candidate.mtime,
                                                                           examined.info):  # known: fill it?
                            sidecars[candidate.path] = (examined.sha256, row_values(examined.info, self.prompt,
                                                                                    self.model))
                        if examined.values is not None:
                            later_copies.setdefault(examined.sha256, []).append(candidate)
                        if examined.staged is not None:  # a worker wrote it before this duplicate was seen
                            discard_quietly(self.files, examined.staged)
                    else:
                        first_copy[examined.sha256] = candidate.path
                        to_stage.append(examined)
                if to_stage and all(e.staged is not None for e in to_stage):  # the worker processes staged them
                    staged: list[StagedFile | Exception] = [e.staged for e in to_stage if e.staged is not None]
                    batch.add(to_stage, done_future(staged), _held_by(to_stage))
                elif to_stage:
                    batch.add(to_stage, self._io.submit(each, self._stage, to_stage), _held_by(to_stage))
                window.popleft()
                report(progress, "import", advance=len(chunk.files), total=total,
                       bytes_advance=sum(c.size for c in chunk.files), item=chunk.files[-1].path)
                # Cut by bytes too (videos): a commit is what a Ctrl-C keeps and what --move may delete.
                if batch.files >= self.batch_size or batch.bytes >= BATCH_BYTES:
                    commit()
                refill()
            if batch.chunks:
                commit()
            settle()
            result.filled.update(fill_duplicates(self.db, self.user_id, sidecars, self._placeholders))
        except BaseException as exc:  # interrupted (Ctrl-C) or the disk failed: leave no temporary file behind
            to_the_end(lambda: self._abandon(window, batch, committing))
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, ImportInterrupted):
                for ended in (committing, settling):  # a commit under way at the stop counts, if it ended well
                    if ended is not None and committed_well(ended):
                        result.merge(ended.commit.result())  # type: ignore[union-attr]
                result.seconds = time.perf_counter() - started
                raise ImportInterrupted(result) from exc
            raise
        finally:
            if examiners is not None:
                to_the_end(examiners.close)
        self._offer_copies_again(result, first_copy, later_copies)
        result.seconds = time.perf_counter() - started
        return result

    def _offer_copies_again(self, result: ImportReport, first_copy: dict[str, str],
                            later_copies: dict[str, list[Candidate]]) -> None:
        """Import the other copies of a file whose first copy was refused after they were counted as duplicates
        (the first copy can fail at its staging or commit: replaced meanwhile, the disk full)."""
        again = [(copy, first_copy[sha256]) for sha256, copies in later_copies.items()
                 if first_copy[sha256] in result.refused for copy in copies]
        if not again:
            return
        offered = {copy.path for copy, _first in again}
        result.duplicates = [path for path in result.duplicates if path not in offered]
        if self._offers_left == 0:  # many copies, each refused in turn (a full disk): say why, do not go on
            result.refused.update((copy.path, f"a copy of {first}, which was refused: {result.refused[first]}")
                                  for copy, first in again)
            return
        self._offers_left -= 1
        try:
            result.merge(self.import_candidates([copy for copy, _first in again], total=len(again)))
        finally:
            self._offers_left += 1

    def _abandon(self, window: deque[Chunk], batch: Batch, committing: Batch | None) -> None:
        """Stop examining files, let a commit under way end, and remove what the pending batch staged.

        Only the futures' own failures are caught: a Ctrl-C while waiting
        goes up to :func:`to_the_end`, which starts this over.
        """
        for chunk in window:
            if chunk.work.cancel():
                continue
            try:  # a worker process may have staged its files already
                outcomes = chunk.work.result()
            except Exception:  # it staged nothing
                continue
            for examined in outcomes:
                if isinstance(examined, Examined) and examined.staged is not None:
                    discard_quietly(self.files, examined.staged)
        if committing is not None:
            try:
                committing.commit.result()  # type: ignore[union-attr]
            except Exception:  # the commit cleaned up after itself
                pass
        for _examined, staging in batch.chunks:
            try:
                staged_files = staging.result()
            except Exception:  # nothing to remove
                continue
            for staged in staged_files:
                if isinstance(staged, StagedFile):
                    discard_quietly(self.files, staged)

    def import_paths(self, paths: Iterable[str | os.PathLike[str]], root: Path,
                     progress: ProgressCallback | None = None) -> ImportReport:
        """Import the given files (checked like a scan would; refused ones get a reason)."""
        refused: dict[str, str] = {}
        found: list[Candidate] = []
        for path in paths:
            candidate, reason = check_path(path, root.resolve())
            if candidate is not None:
                found.append(candidate)
            elif reason is not None:
                refused[os.fspath(path)] = reason
        found.sort(key=lambda c: (c.mtime, c.path))
        result = self.import_candidates(found, total=len(found), progress=progress)
        result.refused.update(refused)
        return result

    # -------------------------------------------------------------- commit

    def _commit(self, pending: Batch) -> ImportReport:
        """Commit a batch (in the committer thread); what it did, as a report to merge."""
        return commit_batch(self.workspace, self.files, self.mode, pending.chunks, self.db, self._placeholders)


def _held(candidate: Candidate) -> int:
    """Bytes of a file the pipeline keeps in memory between reading and staging it."""
    return candidate.size if candidate.size <= IN_MEMORY_BYTES else 0


def _held_by(examined: list[Examined]) -> int:
    return sum(_held(e.candidate) for e in examined)


def import_folder(db: Database, files: FileStore, user_id: str, path: str | os.PathLike[str], *,
                  recursive: bool = False, mode: Mode = "copy", model: str | None = None, prompt: str | None = None,
                  progress: ProgressCallback | None = None, workers: int | None = None) -> ImportReport:
    """Import every media file of a folder into the workspace; see :meth:`Workspace.import_folder`."""
    folder = check_folder(path, "the folder to import", (db.path.parent, files))
    recursive = models.check_flag(recursive, "recursive")
    models.check_callback(progress, "progress")
    with Importer(db, files, user_id, mode=mode, model=model, prompt=prompt, workers=workers) as importer:
        found = scan(folder, recursive)
        result = importer.import_candidates(found.candidates, total=len(found.candidates), progress=progress)
    result.refused.update(found.refused)
    result.ignored += found.ignored
    result.folders_not_entered += len(found.folders_not_entered)
    return result


__all__ = ["ImportReport", "ImportedFile", "Importer", "JobGrouper", "Candidate", "import_folder", "scan", "PLACEHOLDERS",
           "is_candidate_name", "is_ignored_name", "check_path"]
