"""Check that rows and files agree: orphans, missing files, hash mismatches; optionally repair.

Memory stays flat however large the vault: rows are read a page at a time
(keyset pages on the unique path indexes, each page its own short read, so a
long verify never pins the WAL), files are listed as a stream and looked up a
page at a time by path, and only the problems are kept.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from . import _stale_temps as stale_temps
from . import _write_intents as write_intents
from . import pending
from ._disk import TEMP_PREFIX, unlink_quietly
from ._recovered import copy_to_recovered, recover
from .db import Database
from .errors import StorageError
from .files import LIBRARY_BUCKET, WORKSPACE_BUCKET, FileStore
from .models import SURROGATES, check_callback
from .progress import ProgressCallback, report

#: Rows read per query.
PAGE_ROWS = 2_000
#: Threads hashing files at once, and how many rows may be in flight ahead of the one reported.
HASH_THREADS = min(8, 2 * (os.cpu_count() or 1))
HASH_WINDOW = 8 * HASH_THREADS


class _Kind(NamedTuple):
    """Where one kind of asset lives: its bucket, its table and the table's path column."""

    bucket: str
    table: str
    column: str


_KINDS = tuple(_Kind(bucket, *pending.PATH_COLUMNS[bucket]) for bucket in (WORKSPACE_BUCKET, LIBRARY_BUCKET))


@dataclass
class VerifyReport:
    """What :func:`verify` found (paths are ``bucket/relative``) and what it repaired."""

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    stale_temps: list[str] = field(default_factory=list)
    #: Files there that cannot be read (no permission, a disk error): fix that, then verify again.
    unreadable: list[str] = field(default_factory=list)
    #: Folders that cannot be listed (``bucket/folder/``): files in them go unchecked, their rows untouched.
    unreadable_folders: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepairable: list[str] = field(default_factory=list)
    #: Files without a row that a write killed before its commit left (or one under way): not a problem; the
    #: next opening of the vault for writing removes them.
    unsettled: list[str] = field(default_factory=list)
    #: Where repair moved the files without a row (under the vault's ``recovered/`` folder).
    recovered: list[str] = field(default_factory=list)
    #: The asset id of each missing, damaged or unreadable file (``bucket/path`` -> id).
    asset_ids: dict[str, str] = field(default_factory=dict)
    #: What SQLite's own check found wrong in ``vault.db`` (then nothing else was checked): restore it.
    database_damage: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing is wrong (after repair, if repair ran and fixed everything)."""
        problems = len(self.missing) + len(self.orphans) + len(self.mismatched) + len(self.stale_temps)
        if self.unreadable or self.unreadable_folders or self.database_damage:
            return False
        return problems == 0 or (bool(self.repaired) and not self.unrepairable and len(self.repaired) == problems)


def _rows(db: Database) -> Iterator[tuple[_Kind, str, str, str]]:
    """``(kind, path, id, sha256)`` of every row of every user, a page at a time."""
    for kind in _KINDS:
        last = ""
        while True:
            page = db.conn.execute(
                f"SELECT {kind.column}, id, sha256 FROM {kind.table} WHERE {kind.column} > ?"
                f" ORDER BY {kind.column} LIMIT ?", (last, PAGE_ROWS)).fetchall()
            for path, row_id, sha in page:
                yield kind, path, row_id, sha
            if len(page) < PAGE_ROWS:
                break
            last = page[-1][0]


def verify(db: Database, files: FileStore, *, repair: bool = False, check_hashes: bool = True,
           progress: ProgressCallback | None = None) -> VerifyReport:
    """Compare every row with its file and every file with its row.

    With ``repair``: stale temporary files are removed (they were never
    committed); files without a row are moved to the vault's ``recovered/``
    folder, not deleted (one may be the only copy of an asset whose row was
    lost, e.g. after restoring an older ``vault.db``: add it back, or delete
    it); a missing or damaged file is restored from a twin with
    the same hash where one exists; a workspace row whose file is gone for
    good is removed (a staging area: the asset was already lost). A library
    row without its file is never removed, since its deletion would be synced
    and remove the server's good copy: it is listed as unrepairable, to
    restore its file or delete it on purpose. Repair refuses to start when a
    bucket's folder, or a user's folder in it, is missing while rows have
    their files there (a disk not mounted?). SQLite's own check of the
    database comes first: a damaged one is reported (``database_damage``),
    and nothing else is checked or repaired.
    """
    check_callback(progress, "progress")
    result = VerifyReport(database_damage=db.damage())
    if result.database_damage:  # (its rows cannot be trusted, nor its repairs made)
        return result
    if repair:
        _check_repairable(db, files)
    if not db.readonly:
        pending.drain(db, files)
        write_intents.settle_now(db, files)
    total = sum(db.conn.execute(f"SELECT count(*) FROM {kind.table}").fetchone()[0] for kind in _KINDS)
    report(progress, "verify", total=total)
    broken: dict[str, tuple[_Kind, str, str]] = {}  # "bucket/path" -> (kind, id, sha256), for repair
    for (kind, relative, row_id, sha), state in _states(files, _rows(db), check_hashes):
        result.checked += 1
        entry = f"{kind.bucket}/{relative}"
        if state is not None:
            # unreadable: there, but not to be read; nothing to repair, and not to be replaced
            getattr(result, state).append(entry)
            result.asset_ids[entry] = row_id
            if state != "unreadable":
                broken[entry] = (kind, row_id, sha)
        report(progress, "verify", advance=1, total=total)
    now = time.time()
    for kind in _KINDS:
        walk = files.walk(kind.bucket, _folder_noter(result, kind.bucket))
        while found := list(itertools.islice(walk, PAGE_ROWS)):
            with_rows = pending.paths_in_use(db.conn, kind.bucket, found)  # one query per page of files
            for relative in found:
                if os.path.basename(relative).startswith(TEMP_PREFIX):
                    if stale_temps.is_stale(files, kind.bucket, relative, now):
                        result.stale_temps.append(f"{kind.bucket}/{relative}")
                elif relative not in with_rows:
                    result.orphans.append(f"{kind.bucket}/{relative}")
    _keep_in_unreadable_folders(result, broken)
    _wait_for_writers(db)
    _drop_settled(db, result, broken)
    _set_apart_unsettled_writes(db, files, result)
    if repair:
        _repair(db, files, result, broken)
    return result


def _folder_noter(result: VerifyReport, bucket: str) -> Callable[[str, OSError], None]:
    """The ``on_error`` of a walk of ``bucket``: a folder that cannot be listed is reported, and the walk goes on."""
    return lambda folder, _exc: result.unreadable_folders.append(f"{bucket}/{folder}")


def _keep_in_unreadable_folders(result: VerifyReport, broken: dict[str, tuple[_Kind, str, str]]) -> None:
    """A file that looked missing in a folder that cannot be listed is called unreadable, never repaired:
    what is in there cannot be told."""
    folders = tuple(result.unreadable_folders)
    if not folders:
        return
    hidden = [entry for entry in result.missing if entry.startswith(folders)]
    result.missing[:] = [entry for entry in result.missing if not entry.startswith(folders)]
    result.unreadable.extend(hidden)
    for entry in hidden:
        del broken[entry]


def _check_repairable(db: Database, files: FileStore) -> None:
    """Refuse a repair that would take an absent disk for lost files: a bucket's folder, or a user's folder in
    it, missing while rows use it (a mount point not mounted is an empty folder: every row would look missing,
    and every workspace row would be deleted)."""
    if db.readonly:
        raise StorageError("this vault is open read-only; open it for writing to repair it")
    for kind in _KINDS:
        base = f"{files.root}/{kind.bucket}"
        if not _is_folder(files, base):
            raise StorageError(f"the folder {base} is missing: is the disk mounted? Nothing was "
                               "repaired; run 'localvault verify' without --repair to see what is wrong")
        for owner, rows in _row_owners(db, kind):
            if not _is_folder(files, f"{base}/{owner}"):
                raise _absent_folder(f"{base}/{owner}", rows)


def _absent_folder(folder: str, rows: int) -> StorageError:
    files_in_it = "asset has its file" if rows == 1 else "assets have their file"
    return StorageError(f"the folder {folder} is missing, but {rows} {files_in_it} in it: is the disk mounted? "
                        "Nothing was repaired; run 'localvault verify' without --repair to see what is wrong (if "
                        "those files are gone for good, make that folder, empty, and repair again)")


def _row_owners(db: Database, kind: _Kind) -> list[tuple[str, int]]:
    """Each first folder of this kind's paths (the user's folder) and how many rows use it."""
    folder = f"substr({kind.column}, 1, instr({kind.column}, '/') - 1)"
    return db.conn.execute(f"SELECT {folder} AS owner, count(*) FROM {kind.table} "
                           f"WHERE instr({kind.column}, '/') > 1 GROUP BY owner").fetchall()


def _is_folder(files: FileStore, path: str) -> bool:
    """Whether a folder is at ``path``; StorageError when that cannot be told (no permission to look)."""
    if not files.local:
        return bool(files.fs.isdir(path))
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise StorageError(f"cannot look at the folder {path}: {exc.strerror or exc}; fix its permissions, "
                           "then repair again (nothing was repaired)") from None


def _wait_for_writers(db: Database) -> None:
    """Let a write under way finish (commit or roll back): a file it renamed in was listed before its row
    was committed, and would look like an orphan. Read-only, or locked for long: the check stands as it is."""
    if db.readonly:
        return
    try:
        with db.write():
            pass
    except StorageError:
        pass


def _drop_settled(db: Database, result: VerifyReport, broken: dict[str, tuple[_Kind, str, str]]) -> None:
    """Forget missing or mismatched files another process settled while the check ran (their row deleted or
    changed); orphans settled meanwhile are dropped by :func:`_drop_claimed`."""
    for problems in (result.missing, result.mismatched):
        problems[:] = [entry for entry in problems if _row_still_there(db, entry, broken[entry])]


def _drop_claimed(db: Database, files: FileStore, result: VerifyReport) -> None:
    """Forget orphans settled since they were listed: a row committed for the file, or its row's deletion
    committed and queued (its drain removes it), or the file gone (removed by the writer whose transaction
    failed)."""
    for kind in _KINDS:
        prefix = f"{kind.bucket}/"
        mine = [entry[len(prefix):] for entry in result.orphans if entry.startswith(prefix)]
        claimed = {path for start in range(0, len(mine), PAGE_ROWS)
                   for path in pending.paths_in_use(db.conn, kind.bucket, mine[start:start + PAGE_ROWS])}
        result.orphans[:] = [e for e in result.orphans if not (e.startswith(prefix) and e[len(prefix):] in claimed)]
    result.orphans[:] = [e for e in result.orphans
                         if not pending.is_queued(db.conn, *e.split("/", 1)) and files.exists(*e.split("/", 1))]


def _set_apart_unsettled_writes(db: Database, files: FileStore, result: VerifyReport) -> None:
    """Files without a row that a noted write left (killed before its commit, or under way): not orphans, but
    ``unsettled``, which the next opening of the vault for writing removes (a read-only check cannot)."""
    noted = {f"{bucket}/{path}" for bucket, path in write_intents.left_behind(db.conn, files)}
    _drop_claimed(db, files, result)  # a write that committed meanwhile dropped its note: its row claims the file now
    result.unsettled = [entry for entry in result.orphans if entry in noted]
    result.orphans[:] = [entry for entry in result.orphans if entry not in noted]


def _row_still_there(db: Database, entry: str, problem: tuple[_Kind, str, str]) -> bool:
    kind, row_id, sha = problem
    relative = entry.split("/", 1)[1]
    return db.conn.execute(f"SELECT 1 FROM {kind.table} WHERE id = ? AND {kind.column} = ? AND sha256 = ?",
                           (row_id, relative, sha)).fetchone() is not None


def _settled_since(conn: sqlite3.Connection, files: FileStore, bucket: str, relative: str) -> bool:
    """Whether a file seen without a row is no longer one to repair: a row has taken its path, its deletion
    is queued (a delete committed its row's removal; its drain removes the file, which must not come back
    in recovered/), or it is gone."""
    if _storable(relative) and (pending.still_used(conn, bucket, relative)
                                or pending.is_queued(conn, bucket, relative)):
        return True
    return not files.exists(bucket, relative)


def _storable(path: str) -> bool:
    """Whether a row can hold ``path``: a name that is not UTF-8 (Python holds its bytes as lone surrogates)
    cannot be, so its file has no row."""
    return not SURROGATES.search(path)


def _states(files: FileStore, rows: Iterator[tuple[_Kind, str, str, str]], check_hashes: bool
            ) -> Iterator[tuple[tuple[_Kind, str, str, str], str | None]]:
    """Each row with its file's state (see :func:`_state`), in the rows' order.

    Files are hashed by a few threads at once, a bounded window ahead of the
    row being reported: reading a file and hashing it both release the GIL,
    so a verify uses every core, and keeps a disk's queue busy, instead of
    waiting on one file at a time. Memory stays flat: at most
    ``HASH_WINDOW`` rows are in flight.
    """
    if not check_hashes:  # a stat each: quicker in line than handed to a thread
        for row in rows:
            yield row, _state(files, row, check_hashes)
        return
    pool = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="localvault-verify")
    try:
        window: deque[tuple[tuple[_Kind, str, str, str], Future[str | None]]] = deque()
        for row in rows:
            window.append((row, pool.submit(_state, files, row, check_hashes)))
            if len(window) >= HASH_WINDOW:
                done, state = window.popleft()
                yield done, state.result()
        while window:
            done, state = window.popleft()
            yield done, state.result()
    finally:  # cut short (Ctrl-C, a progress callback's error): the files not yet begun are not read
        pool.shutdown(wait=True, cancel_futures=True)


def _state(files: FileStore, row: tuple[_Kind, str, str, str], check_hashes: bool) -> str | None:
    """The ``VerifyReport`` list a row's file belongs in: ``"missing"``, ``"mismatched"``, or ``"unreadable"``
    (there, but it cannot be read, or, without hashing, not even looked at); None if it is fine."""
    kind, relative, _id, sha = row
    try:
        if not check_hashes:
            return None if files.is_file(kind.bucket, relative) else "missing"
        digest = _sha256(files, kind.bucket, relative)
    except OSError:
        return "unreadable"
    return "missing" if digest is None else "mismatched" if digest != sha else None


def _sha256(files: FileStore, bucket: str, relative: str) -> str | None:
    """The file's sha256; None where no file is (or a folder is); OSError when one is there but unreadable,
    or is no regular file (a named pipe, never opened for reading: that would wait for a writer, for ever)."""
    try:
        return files.sha256(bucket, relative)
    except (StorageError, IsADirectoryError, NotADirectoryError):  # no such file, a folder, a file for a folder
        return None


def _healthy_sha256(files: FileStore, bucket: str, relative: str) -> str | None:
    try:
        return _sha256(files, bucket, relative)
    except OSError:
        return None


def _twins(db: Database, files: FileStore, broken: dict[str, tuple[_Kind, str, str]]) -> dict[str, tuple[str, str]]:
    """For each hash of a broken file, a healthy file with the same bytes (any user, either bucket).

    A twin is hashed before it is chosen, even by a quick verify: restoring from a damaged one would
    only move the damage.
    """
    wanted = {sha for _kind, _id, sha in broken.values()}
    found: dict[str, tuple[str, str]] = {}
    for kind, relative, _id, sha in _rows(db):
        healthy = f"{kind.bucket}/{relative}" not in broken
        if sha in wanted and sha not in found and healthy and _healthy_sha256(files, kind.bucket, relative) == sha:
            found[sha] = (kind.bucket, relative)
    return found


def _repair(db: Database, files: FileStore, result: VerifyReport, broken: dict[str, tuple[_Kind, str, str]]) -> None:
    for entry in result.orphans + result.stale_temps:
        bucket, relative = entry.split("/", 1)
        stale = entry in result.stale_temps
        copy = None if stale else copy_to_recovered(files, bucket, relative)  # a long copy: before the lock
        with db.write() as conn:  # under the lock: another process may have settled it meanwhile
            if _settled_since(conn, files, bucket, relative):
                if copy is not None:
                    unlink_quietly(Path(copy))
            elif stale:
                files.remove(bucket, relative)
            else:
                result.recovered.append(recover(files, bucket, relative, copied=copy))
        result.repaired.append(entry)
    twins = _twins(db, files, broken) if broken else {}
    missing = set(result.missing)
    for entry in result.missing + result.mismatched:
        bucket, relative = entry.split("/", 1)
        kind, row_id, sha = broken[entry]
        twin = twins.get(sha)
        with db.write() as conn:  # under the lock, and only if the row is still the one that was checked
            if not _row_still_there(db, entry, broken[entry]):
                result.repaired.append(entry)  # deleted or replaced since: no longer this problem
            elif twin is not None:
                files.link(twin[0], twin[1], bucket, relative, sha)
                result.repaired.append(entry)
            elif entry in missing and kind.bucket == WORKSPACE_BUCKET:
                conn.execute(f"DELETE FROM {kind.table} WHERE id = ?", (row_id,))
                result.repaired.append(entry)
            else:
                result.unrepairable.append(entry)
