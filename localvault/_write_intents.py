"""Files written into place before their rows commit: noted first, so that a killed process leaves none behind.

A write renames (or hard-links) its file to its final name inside the
transaction that inserts its row (DESIGN.md §3). A process killed between the
two — a SIGKILL, the OOM killer, a power cut once the rename is on disk —
would leave a file that no row names. So the write first notes where its
files go, in a transaction of its own (:func:`note`), and the transaction
that inserts its rows drops the note (:func:`drop`). Opening the vault for
writing settles what notes remain (:func:`settle`): under the write lock, no
write is between its rename and its commit, so a file a note covers that no
row uses was left by a write that never committed, and is removed. A note
names a library file by its path (a fresh id: whatever is there is the
write's); a workspace write, which takes its job's next index only under the
lock, names its job folder and the sha256 of its files: another file without
a row in that folder (the only copy of an asset whose row was lost, say) is
left to ``verify --repair``, which sets such files aside. The bytes removed
are not lost: each file was copied or linked from one the write leaves alone
(the rig's source, which ``--move`` deletes only after the commit, or the
workspace's file of a save).

A note of a write still waiting for the lock may be met by a settle that
finds nothing to remove: notes are forgotten only once
:data:`FORGET_AFTER_SECONDS` old, so the write stays covered until it is done.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable
from datetime import timedelta

from ._disk import TEMP_PREFIX
from .db import Database
from .errors import LocalVaultError, StorageError
from .files import FileStore
from .pending import make_removals_durable, paths_in_use
from .timestamps import utc_in

log = logging.getLogger(__name__)

#: A note this old is forgotten once what it covers was settled: its write ended long ago, one way or another.
FORGET_AFTER_SECONDS = 600.0
#: How long a failed write waits for the lock to drop its note (it is an error path: not the usual 60 s).
DROP_WAIT_MS = 2_000


def note(db: Database, bucket: str, paths: Iterable[str], hashes: Iterable[str] = ()) -> int:
    """Commit a note that files will be written at ``paths`` in ``bucket``; its id, for :func:`drop`.

    A path is a file's (a fresh name: whatever is found there is the write's), or a folder's, ending in
    "/": then only a file there whose sha256 is among ``hashes`` is the write's.
    """
    with db.write() as conn:
        cursor = conn.execute("INSERT INTO write_intents (bucket, paths, hashes) VALUES (?, ?, ?)",
                              (bucket, json.dumps(sorted(set(paths))), json.dumps(sorted(set(hashes)))))
        return int(cursor.lastrowid)  # type: ignore[arg-type]


def drop(conn: sqlite3.Connection, note_id: int) -> None:
    """In the transaction that inserts the rows: the write is done."""
    conn.execute("DELETE FROM write_intents WHERE id = ?", (note_id,))


def drop_quietly(db: Database, note_id: int) -> None:
    """After a write that failed and removed its files: the note is no longer needed. If the lock cannot be
    had soon, or this fails too, the note stays: the next settle finds nothing and forgets it."""
    try:
        with db.write(wait_ms=DROP_WAIT_MS) as conn:
            drop(conn, note_id)
    except LocalVaultError:
        pass


def _files_at(files: FileStore, bucket: str, path: str) -> list[str]:
    """The files at a noted path that are there: the file itself, or a folder's (temporary files aside: they
    are a write's still under way, or :mod:`localvault.verify`'s to remove once stale)."""
    if not path.endswith("/"):
        return [path] if files.exists(bucket, path) else []
    folder = path.rstrip("/")
    full = files.full_path(bucket, folder)
    try:
        if files.local:
            names = [entry.name for entry in os.scandir(full) if entry.is_file(follow_symlinks=False)]
        else:
            names = [os.path.basename(p) for p in files.fs.ls(full, detail=False) if files.fs.isfile(p)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:  # no permission to list it, a disk error
        raise StorageError(f"cannot list {full}: {exc.strerror or exc}; check the folder and its permissions") from None
    return [f"{folder}/{name}" for name in sorted(names) if not name.startswith(TEMP_PREFIX)]


def _sha256(files: FileStore, bucket: str, relative: str) -> str | None:
    try:
        return files.sha256(bucket, relative)
    except (LocalVaultError, OSError):
        return None


def left_behind(conn: sqlite3.Connection, files: FileStore,
                unlisted: list[str] | None = None) -> list[tuple[str, str]]:
    """(bucket, path) of each file a note covers that no row uses and that is the noted write's (none in a
    vault of schema 4 or older, read without being migrated: it has no notes). A noted folder that cannot be
    listed raises StorageError, or, given ``unlisted``, is added to it (why) and passed over."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'write_intents'").fetchone() is None:
        return []
    covered: dict[tuple[str, str], set[str] | None] = {}  # each path once; None: any file found is the write's
    for bucket, paths, hashes in conn.execute("SELECT bucket, paths, hashes FROM write_intents").fetchall():
        for path in json.loads(paths):
            if path.endswith("/"):
                known = covered.setdefault((bucket, path), set())
                if known is not None:
                    known.update(json.loads(hashes))
            else:
                covered[(bucket, path)] = None
    found: list[tuple[str, str]] = []
    for (bucket, path), hashes in covered.items():
        try:
            found_there = _files_at(files, bucket, path)
        except StorageError as exc:
            if unlisted is None:
                raise
            unlisted.append(str(exc))
            continue
        in_use = paths_in_use(conn, bucket, found_there)
        for relative in (p for p in found_there if p not in in_use):
            if hashes is None or _sha256(files, bucket, relative) in hashes:
                found.append((bucket, relative))
    return found


def settle(conn: sqlite3.Connection, files: FileStore) -> list[str]:
    """Inside a write transaction: remove the files the noted writes left that no row uses, and forget old
    notes. A file that cannot be removed is warned about and its note kept (it does not stop the others, nor
    the opening of the vault). Returns the removed files, as ``bucket/path``."""
    removed: list[str] = []
    unlisted: list[str] = []
    leftovers = left_behind(conn, files, unlisted)
    for problem in unlisted:
        log.warning("could not look for the files a write cut short left (every note is kept, to look again at "
                    "the next opening): %s", problem)
    failed = bool(unlisted)
    for bucket, relative in leftovers:
        try:
            files.remove(bucket, relative)
        except LocalVaultError as exc:
            log.warning("could not remove %s/%s, left by a write cut short: %s", bucket, relative, exc)
            failed = True
            continue
        removed.append(f"{bucket}/{relative}")
    if removed:
        try:
            make_removals_durable(files, {(bucket, os.path.dirname(relative)) for bucket, relative in leftovers})
        except StorageError as exc:
            log.warning("could not make the removal of files a write cut short left durable: %s", exc)
            failed = True
        log.info("removed %d file(s) that writes cut short before their commit left: %s", len(removed),
                 ", ".join(removed[:10]))
    if not failed:  # (else every note stays, to be tried again)
        conn.execute("DELETE FROM write_intents WHERE noted_at < ?", (utc_in(timedelta(seconds=-FORGET_AFTER_SECONDS)),))
    return removed


def settle_now(db: Database, files: FileStore) -> list[str]:
    """:func:`settle` in a transaction of its own, if any note is there (one query otherwise)."""
    if db.conn.execute("SELECT 1 FROM write_intents LIMIT 1").fetchone() is None:
        return []
    with db.write() as conn:
        return settle(conn, files)


__all__ = ["note", "drop", "drop_quietly", "settle", "settle_now", "left_behind", "FORGET_AFTER_SECONDS"]
