"""Committing one batch of an import: the committer thread's work (see :mod:`localvault.importer`).

A batch arrives as chunks of examined files, each with the future of its
staging. Files whose staging failed are refused; the rest go to
:meth:`Workspace.add_batch` in one transaction; ``move`` sources are deleted
only after that commit.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from concurrent.futures import Future

from ._examine import Examined, StagingError, changed_while_importing, file_identity, link_outdated
from ._late_sidecars import RowValues, came_with_its_file, fill_duplicates
from .db import Database
from .errors import LocalVaultError
from .files import FileStore, StagedFile
from .import_report import ImportedFile, ImportReport
from .workspace import BatchEntry, Workspace

log = logging.getLogger("localvault.importer")
#: Warnings that no refusal carries (a --move source kept, a temporary file left): the watch CLI shows these.
notices = logging.getLogger("localvault.importer.notices")

#: A batch as the importer hands it over: chunks of examined files, each with its staging's outcome per file.
Chunks = list[tuple[list[Examined], "Future[list[StagedFile | Exception]]"]]


def commit_batch(workspace: Workspace, files: FileStore, mode: str, chunks: Chunks, db: Database,
                 placeholders: RowValues) -> ImportReport:
    """Commit a batch; what it did, as a report to merge. Raises only for an interruption (Ctrl-C).
    ``placeholders``: the row values of a file without metadata (see :func:`fill_duplicates`)."""
    result = ImportReport()
    batch: list[Examined] = []
    for chunk, staging in chunks:
        for ready, staged in zip(chunk, staging.result(), strict=True):
            if isinstance(staged, Exception):  # e.g. the disk is full: this file is refused
                refuse(result, ready.candidate.path, staged)
            elif link_outdated(staged, ready):  # rewritten in place since it was linked
                discard_quietly(files, staged)
                refuse(result, ready.candidate.path, changed_while_importing(ready.candidate.path))
            else:
                ready.staged = staged
                batch.append(ready)
    entries = [BatchEntry(r.staged, r.facts, r.job_id, *r.values) for r in batch]  # type: ignore[arg-type,misc]
    try:  # values were checked by the workers, so only the disk or the database can fail here
        outcome = workspace.add_batch(entries)
    except (sqlite3.Error, LocalVaultError, OSError) as exc:
        log.error("a batch of %d files could not be committed: %s", len(batch), exc)
        result.refused.update((r.candidate.path, refusal_reason(exc)) for r in batch)
        result.retryable += [r.candidate.path for r in batch]
        return result
    except BaseException:  # add_batch removes its files on its own errors; this covers any other way out
        for ready in batch:
            discard_quietly(files, ready.staged)  # type: ignore[arg-type]
        raise
    done: list[ImportedFile] = []
    sidecars: dict[str, tuple[str, RowValues]] = {}
    for ready, added in zip(batch, outcome, strict=True):
        if added is None:
            result.duplicates.append(ready.candidate.path)
            if ready.values is not None and came_with_its_file(ready.candidate.path, ready.candidate.mtime, ready.info):
                sidecars[ready.candidate.path] = (ready.sha256, ready.values)
        else:
            done.append(ImportedFile(ready.candidate.path, added[0], ready.job_id, added[1], ready.sha256,
                                     ready.staged.size, ready.info.source))  # type: ignore[union-attr]
    result.imported += done
    result.bytes_imported += sum(item.size for item in done)
    if mode == "move":
        identities = {r.candidate.path: r.identity for r in batch}
        for item in done:
            try:  # (a symbolic link is compared by its file, and it is the link that goes)
                if file_identity(os.stat(item.source)) != identities[item.source]:
                    notices.warning("imported %s but kept it: another file has taken its place since", item.source)
                    continue
                os.unlink(item.source)
            except OSError as exc:
                notices.warning("imported %s but could not delete it: %s", item.source, exc)
    result.filled = fill_duplicates(db, workspace.user_id, sidecars, placeholders)
    return result


def discard_quietly(files: FileStore, staged: StagedFile) -> None:
    """Remove a staged file; a failure is logged (verify --repair removes what is left), never raised."""
    try:
        files.discard(staged)
    except LocalVaultError:
        notices.warning("could not remove the temporary file %s", staged.temp_path)


def refuse(result: ImportReport, path: str, exc: BaseException) -> None:
    """Record a file's refusal; one the vault could not write is also listed to try again (the watcher does)."""
    result.refused[path] = refusal_reason(exc)
    if isinstance(exc, StagingError):
        result.retryable.append(path)


def refusal_reason(exc: BaseException) -> str:
    """The reason an import reports for a file that failed with ``exc``."""
    if isinstance(exc, LocalVaultError):
        return str(exc)
    return f"cannot read it: {exc.strerror or exc}" if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
