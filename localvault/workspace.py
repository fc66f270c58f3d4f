"""workspace_assets: the staging area for fresh generations; they expire after 7 days."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _write_intents as write_intents
from . import models, pending, rows
from ._cleanup import CleanupReport, remove_expired, set_expiry
from ._recovered import set_aside_strays
from ._sqlite_errors import raising_vault_errors
from .db import Database
from .errors import DuplicateError, InvalidInputError, LocalVaultError, NotFoundError
from .files import WORKSPACE_BUCKET, FileStore, StagedFile
from .ingest import UNKNOWN_MODEL, BatchEntry, GenerationValues, Prepared, prepare_with_values
from .models import GenerationInfo, Page, WorkspaceAsset
from .progress import ProgressCallback
from .timestamps import format_time, utc_now

if TYPE_CHECKING:  # the importer is loaded on first use
    from .importer import ImportReport, Mode

_INSERT = ("INSERT INTO workspace_assets (id, user_id, asset_type, temp_storage_path, file_size_bytes, mime_type,"
           " duration_seconds, job_id, asset_index, generation_seed, original_prompt, model_used,"
           " generation_settings, width, height, sha256) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")

log = logging.getLogger(__name__)

#: Batches of at least this many files are made durable with one syncfs; smaller ones file by file.
SYNCFS_MIN_FILES = 32
#: How long a workspace asset lives (the schema's default ``expires_at``: 7 days after it was taken).
LIFETIME = timedelta(days=7)
#: How long undoing a failed add waits for the write lock (the failure may have been that lock: not 60 s again).
UNDO_LOCK_WAIT_MS = 5_000


@raising_vault_errors("_db")
class Workspace:
    """The current user's workspace assets."""

    def __init__(self, db: Database, files: FileStore, user_id: str) -> None:
        self._db = db
        self._files = files
        self.user_id = user_id

    # ----------------------------------------------------------------- add

    def add(
        self,
        source: str | Path,
        *,
        job_id: str | None = None,
        asset_index: int | None = None,
        seed: int | None = None,
        prompt: str | None = None,
        model: str | None = None,
        settings: dict[str, Any] | str | None = None,
        info: GenerationInfo | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> WorkspaceAsset:
        """Copy a file into the workspace and record it.

        Explicit arguments win over ``info``: what a rig embedded in the file
        (or its sidecar), read from it unless given. Missing values get
        placeholders: seed 0, prompt "", model "unknown".
        ``job_id`` defaults to a new job; ``asset_index`` to the next free index
        of the job. Raises :class:`DuplicateError` if this user already has the
        same bytes in the workspace (an expired asset not cleaned up yet does
        not count: it is replaced); nothing is left behind on any error.
        """
        job = models.check_uuid(job_id, "job id") if job_id is not None else str(uuid.uuid4())
        index = (models.check_whole_number(asset_index, "asset index", 0, models.MAX_ASSET_INDEX)
                 if asset_index is not None else None)
        prepared, values = prepare_with_values(self._files, source, WORKSPACE_BUCKET, f"{self.user_id}/{job}",
                                               on_bytes, info, seed=seed, prompt=prompt, model=model,
                                               settings=settings)
        return self._record(prepared, job, index, values)

    def _record(self, prepared: Prepared, job: str, index: int | None, values: GenerationValues) -> WorkspaceAsset:
        committed_path: str | None = None
        asset_id = str(uuid.uuid4())
        note_id: int | None = None
        replaced = False
        try:
            # Noted first: a process killed between the rename and the commit leaves nothing (_write_intents).
            note_id = write_intents.note(self._db, WORKSPACE_BUCKET, [f"{self.user_id}/{job}/"],
                                         [prepared.staged.sha256])
            with self._db.write() as conn:
                # The index first, counting expired rows too: the new file must never land on the path of
                # a row whose deletion is not committed yet (a rollback would bring that row back).
                if index is None:
                    index = conn.execute(
                        "SELECT coalesce(max(asset_index) + 1, 0) FROM workspace_assets WHERE user_id = ? AND job_id = ?",
                        (self.user_id, job),
                    ).fetchone()[0]
                    if index > models.MAX_ASSET_INDEX:
                        raise InvalidInputError(f"job {job} has no index left after {models.MAX_ASSET_INDEX:,}; "
                                                "add the file to another job")
                elif conn.execute(
                    "SELECT 1 FROM workspace_assets WHERE user_id = ? AND job_id = ? AND asset_index = ?",
                    (self.user_id, job, index),
                ).fetchone():
                    raise DuplicateError(f"job {job} already has an asset at index {index}; use another --index")
                replaced = self._drop_expired(conn, [prepared.staged.sha256])
                existing = self._by_sha256(conn, prepared.staged.sha256)
                if existing is not None:
                    raise DuplicateError(
                        f"this file is already in the workspace as {existing}; nothing was added"
                    )
                relative = f"{self.user_id}/{job}/{index}.{prepared.extension}"
                set_aside_strays(conn, self._files, WORKSPACE_BUCKET, [(prepared.staged, relative)])
                self._files.commit(prepared.staged, relative)
                committed_path = relative
                facts = prepared.facts
                try:
                    conn.execute(
                        _INSERT,
                        (asset_id, self.user_id, facts.media_type.asset_type.value, relative, prepared.staged.size,
                         facts.media_type.value, facts.duration_seconds, job, index, values.seed, values.prompt,
                         values.model, values.settings, facts.width, facts.height,
                         prepared.staged.sha256),
                    )
                    row = conn.execute(f"SELECT {rows.WORKSPACE_COLUMNS} FROM workspace_assets WHERE id = ?",
                                       (asset_id,)).fetchone()
                    write_intents.drop(conn, note_id)
                except BaseException:
                    if conn.in_transaction:  # the lock is still ours: no one can have taken the path
                        self._files.remove(WORKSPACE_BUCKET, relative)
                        committed_path = None
                    raise  # (else SQLite rolled back on its own, a full disk: see _remove_unclaimed)
        except BaseException:
            if committed_path is not None:
                self._remove_unclaimed([committed_path])
            else:
                self._files.discard(prepared.staged)
            if note_id is not None and committed_path is None:  # nothing renamed, or removed: else left to a settle
                write_intents.drop_quietly(self._db, note_id)
            raise
        if replaced:  # the expired asset's file, queued: removed now, not at the next delete or housekeeping
            pending.drain_after_commit(self._db, self._files)
        return rows.workspace_asset(row)

    def _remove_unclaimed(self, paths: list[str]) -> None:
        """Remove files renamed into place by a transaction whose COMMIT failed (or was interrupted), unless a
        row uses them: checked under the write lock, since after the rollback another process may have
        committed its own file on the same path (the job's next index), and a Ctrl-C during COMMIT is raised
        after it (the row then is ours). If the lock cannot be had within a few seconds, they stay, for
        ``verify --repair``. (A failure before COMMIT removes them while the transaction still holds the lock,
        unless SQLite has already rolled back on its own, as it does on a full disk.)"""
        if not paths:
            return
        try:
            with self._db.write(wait_ms=UNDO_LOCK_WAIT_MS) as conn:
                for path in paths:
                    if not pending.still_used(conn, WORKSPACE_BUCKET, path):
                        self._files.remove(WORKSPACE_BUCKET, path)
        except LocalVaultError:
            pass

    def _drop_expired(self, conn: sqlite3.Connection, hashes: list[str]) -> bool:
        """Inside a write transaction: delete this user's expired assets with these bytes, queueing their files
        (True if any: the caller drains the queue once it has committed).

        An expired asset is as good as gone (cleanup only has not got to it yet), so the same bytes
        added again make a new asset rather than count as a duplicate of one about to vanish.
        """
        marks = ",".join("?" * len(hashes))
        doomed = conn.execute(
            f"DELETE FROM workspace_assets WHERE user_id = ? AND expires_at <= ? AND sha256 IN ({marks})"
            " RETURNING temp_storage_path", (self.user_id, utc_now(), *hashes)).fetchall()
        pending.queue_delete(conn, WORKSPACE_BUCKET, *(path for (path,) in doomed))
        return bool(doomed)

    def _by_sha256(self, conn: sqlite3.Connection, sha256: str) -> str | None:
        row = conn.execute("SELECT id FROM workspace_assets WHERE user_id = ? AND sha256 = ?", (self.user_id, sha256)).fetchone()
        return row[0] if row else None

    def import_folder(
        self,
        path: str | Path,
        *,
        recursive: bool = False,
        mode: Mode = "copy",
        model: str | None = None,
        prompt: str | None = None,
        progress: ProgressCallback | None = None,
        workers: int | None = None,
    ) -> ImportReport:
        """Import every image and video of a rig's output folder (``mode``: "copy", "move" or "link").

        Idempotent: a file whose bytes this user already has (workspace or library; not an expired
        workspace asset, which the new one replaces) is a duplicate. Metadata is read from each file;
        ``model``/``prompt`` fill only what a file lacks. Files of one run share
        a job id (see :mod:`localvault.importer`). A refused file is reported
        with its reason and never stops the rest. "move" deletes a source once
        its row is committed. ``workers``: examining workers (default one per
        core, at most 8): processes for 1,000 files or more (on a local vault).
        """
        from .importer import import_folder

        return import_folder(self._db, self._files, self.user_id, path, recursive=recursive, mode=mode,
                             model=model, prompt=prompt, progress=progress, workers=workers)

    def add_batch(self, entries: list[BatchEntry], *,
                  io_map: Callable[..., Iterator[Any]] = map) -> list[tuple[str, int] | None]:
        """Commit many staged files in one transaction: ``(asset id, index)`` per entry, None for a duplicate.

        Each file must be staged in its job's folder (``<user>/<job_id>``) or
        in the user's folder (the rename then makes the job's). In
        one ``BEGIN IMMEDIATE`` transaction: skip files this user already
        has (workspace or library), give each file the next free index of its
        job (in the order given), rename the files in place (``io_map`` may
        be a thread pool's ``map``), make files and folders durable (one
        ``syncfs`` for a big batch, else an fsync per file and folder), then insert every
        row and commit. A row never points at a missing or unsynced file; on
        any error nothing is recorded and every file is removed.
        """
        if not entries:
            return []
        user = self.user_id
        out: list[tuple[str, int] | None] = [None] * len(entries)
        moves: list[tuple[StagedFile, str]] = []
        note_id: int | None = None
        replaced = False
        try:
            # Noted first: a process killed between the renames and the commit leaves nothing (_write_intents).
            note_id = write_intents.note(self._db, WORKSPACE_BUCKET, {f"{user}/{e.job_id}/" for e in entries},
                                         [e.staged.sha256 for e in entries])
            with self._db.write() as conn:
                hashes = [e.staged.sha256 for e in entries]
                # Next indexes first, counting expired rows too: no file may land on the path of a row
                # whose deletion is not committed yet (a rollback would bring that row back).
                jobs = sorted({e.job_id for e in entries})
                next_index = {job: 0 for job in jobs}
                next_index.update(conn.execute(
                    f"SELECT job_id, max(asset_index) + 1 FROM workspace_assets WHERE user_id = ? AND job_id IN"
                    f" ({','.join('?' * len(jobs))}) GROUP BY job_id", (user, *jobs)).fetchall())
                replaced = self._drop_expired(conn, hashes)
                marks = ",".join("?" * len(hashes))
                taken = {r[0] for r in conn.execute(
                    f"SELECT sha256 FROM workspace_assets WHERE user_id = ? AND sha256 IN ({marks}) UNION "
                    f"SELECT sha256 FROM user_library WHERE user_id = ? AND sha256 IN ({marks})",
                    (user, *hashes, user, *hashes))}
                values = []
                # Ascending ids in batch order: the batch shares one created_at, and the list breaks that tie by id,
                # so it shows the batch newest (last) first rather than in random order. Each id is still a uuid4.
                ids = sorted(str(uuid.uuid4()) for _ in entries)
                for position, entry in enumerate(entries):
                    if entry.staged.sha256 in taken:
                        continue
                    taken.add(entry.staged.sha256)
                    index = next_index[entry.job_id]
                    next_index[entry.job_id] = index + 1
                    relative = f"{user}/{entry.job_id}/{index}.{entry.facts.media_type.extension}"
                    asset_id = ids[position]
                    moves.append((entry.staged, relative))
                    out[position] = (asset_id, index)
                    facts = entry.facts
                    values.append((asset_id, user, facts.media_type.asset_type.value, relative, entry.staged.size,
                                   facts.media_type.value, facts.duration_seconds, entry.job_id, index, entry.seed,
                                   entry.prompt, entry.model, entry.settings_json, facts.width, facts.height,
                                   entry.staged.sha256))
                set_aside_strays(conn, self._files, WORKSPACE_BUCKET, moves)
                try:
                    for _ in io_map(lambda move: self._files.commit(move[0], move[1], sync_dir=False), moves):
                        pass
                    # syncfs flushes the whole filesystem (other programs' writes too): worth it for big batches only
                    if len(moves) < SYNCFS_MIN_FILES or not self._files.syncfs(WORKSPACE_BUCKET, user):
                        self._files.sync_files(WORKSPACE_BUCKET, [relative for _s, relative in moves], io_map)
                        self._files.sync_dirs(WORKSPACE_BUCKET, [relative for _s, relative in moves])
                    conn.executemany(_INSERT, values)
                    write_intents.drop(conn, note_id)
                except BaseException:
                    if conn.in_transaction:  # the lock is still ours: no one can have taken these paths
                        for _staged, relative in moves:
                            self._files.remove(WORKSPACE_BUCKET, relative)
                        moves.clear()
                    raise  # (else SQLite rolled back on its own, a full disk: see _remove_unclaimed)
        except BaseException:
            self._remove_unclaimed([relative for _staged, relative in moves])
            for entry in entries:
                self._files.discard(entry.staged)
            if note_id is not None and not moves:  # nothing renamed, or removed already: else left to a settle
                write_intents.drop_quietly(self._db, note_id)
            raise
        # Durable now: their pages need not push out what the user reads (a rig's checkpoints). A link's are the source's.
        self._files.release_cached(WORKSPACE_BUCKET, [relative for staged, relative in moves if not staged.linked], io_map)
        for entry, result in zip(entries, out, strict=True):
            if result is None:  # a duplicate's copy; the batch is committed, whatever happens to it now
                try:
                    self._files.discard(entry.staged)
                except LocalVaultError as exc:  # (verify --repair removes it, once an hour old)
                    log.warning("could not remove the temporary copy of a duplicate: %s", exc)
        if replaced:
            pending.drain_after_commit(self._db, self._files)
        return out

    # ---------------------------------------------------------------- read

    def get(self, asset_id: str) -> WorkspaceAsset:
        """One asset of this user; :class:`NotFoundError` otherwise (also for another user's id)."""
        asset_id = models.check_uuid(asset_id, "workspace asset id")
        row = self._db.conn.execute(
            f"SELECT {rows.WORKSPACE_COLUMNS} FROM workspace_assets WHERE id = ? AND user_id = ?", (asset_id, self.user_id)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no workspace asset {asset_id} in this vault; list them with 'localvault ls workspace'")
        return rows.workspace_asset(row)

    def find_sha256(self, sha256: str) -> WorkspaceAsset | None:
        """This user's workspace asset holding these bytes (a hex sha256), expired or not; None if none."""
        row = self._db.conn.execute(
            f"SELECT {rows.WORKSPACE_COLUMNS} FROM workspace_assets WHERE user_id = ? AND sha256 = ?",
            (self.user_id, models.check_sha256(sha256)),
        ).fetchone()
        return rows.workspace_asset(row) if row else None

    def list(self, *, limit: int = 50, cursor: str | None = None, job_id: str | None = None) -> Page[WorkspaceAsset]:
        """Newest first, ``limit`` per page; pass ``next_cursor`` for the next page."""
        limit = rows.check_limit(limit)
        where, params = ["user_id = ?"], [self.user_id]
        if job_id is not None:
            where.append("job_id = ?")
            params.append(models.check_uuid(job_id, "job id"))
        if cursor:
            created_at, last_id = rows.decode_cursor(cursor, "workspace", (rows.CURSOR_TIME, rows.CURSOR_ID))
            where.append("(created_at, id) < (?, ?)")
            params += [created_at, last_id]
        found = self._db.conn.execute(
            f"SELECT {rows.WORKSPACE_COLUMNS} FROM workspace_assets WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, limit + 1),
        ).fetchall()
        items = [rows.workspace_asset(r) for r in found[:limit]]
        next_cursor = (rows.encode_cursor("workspace", format_time(items[-1].created_at), items[-1].id)
                       if len(found) > limit else None)
        return Page(items=items, next_cursor=next_cursor)

    def count(self) -> int:
        """How many workspace assets this user has (expired ones not yet cleaned up included)."""
        return int(self._db.conn.execute("SELECT count(*) FROM workspace_assets WHERE user_id = ?", (self.user_id,)).fetchone()[0])

    def file_path(self, asset: WorkspaceAsset | str) -> str:
        """Where the asset's file lives on the vault's filesystem (``asset``: the asset, or its id)."""
        given = models.asset_given(asset, WorkspaceAsset, self.get, partial(rows.held, self._db.conn,
                                                                           "workspace_assets", self.user_id))
        return self._files.full_path(WORKSPACE_BUCKET, given.temp_storage_path)

    # ------------------------------------------------------------- delete

    def delete(self, asset_id: str) -> None:
        """Remove a workspace asset: its row now, its file right after."""
        asset_id = models.check_uuid(asset_id, "workspace asset id")
        with self._db.write() as conn:
            row = conn.execute(
                "DELETE FROM workspace_assets WHERE id = ? AND user_id = ? RETURNING temp_storage_path",
                (asset_id, self.user_id),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no workspace asset {asset_id} in this vault")
            pending.queue_delete(conn, WORKSPACE_BUCKET, row[0])
        pending.drain_after_commit(self._db, self._files)

    def expire(self, asset_id: str, when: datetime | None = None) -> None:
        """Set an asset's expiry (now by default; a naive datetime is local time); for 'keep longer' tools."""
        set_expiry(self._db, self.user_id, models.check_uuid(asset_id, "workspace asset id"), when)

    def cleanup(self, *, progress: ProgressCallback | None = None, max_assets: int | None = None) -> CleanupReport:
        """Remove expired workspace assets of every user of this vault, rows then files.

        Works in transactions of 2,000 assets (each also removes the files
        the previous one queued), so other writers wait a fraction of a
        second at most and readers never (WAL). Library assets saved from
        an expired asset keep their own copy and are untouched.
        """
        return remove_expired(self._db, self._files, progress=progress, max_assets=max_assets)


__all__ = ["Workspace", "CleanupReport", "BatchEntry", "UNKNOWN_MODEL"]
