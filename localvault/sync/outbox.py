"""The local side of the push: read the outbox as coalesced batches, acknowledge them, keep refusals aside."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..files import LIBRARY_BUCKET
from ..timestamps import utc_now
from .batch import BatchResult, Changes, JsonRow
from .statements import COLLECTION_COLUMNS, LIBRARY_COLUMNS

if TYPE_CHECKING:
    from ..vault import Vault


@dataclass
class Batch:
    """Outbox entries of one user, coalesced by row, with the rows' state at one snapshot."""

    seqs: list[int]
    last_seq: int
    keys: list[tuple[str, str]]
    changes: Changes
    #: (table, row_id) → (op, storage_path, last seq, queued_at) of the newest entry.
    entries: dict[tuple[str, str], tuple[str, str | None, int, str]]
    #: library id → (local file path, sha256, size, mime type) of rows to upsert.
    files: dict[str, tuple[str, str, int, str]]
    #: library ids with an insert among the entries: rows whose object no sync of ours has sent yet.
    inserted: set[str] = field(default_factory=set)
    #: (table, row_id) → why: entries whose id the server cannot take, not sent (refused changes).
    invalid: dict[tuple[str, str], str] = field(default_factory=dict)


def pending_count(vault: Vault, *, with_rejected: bool = False, with_everything: bool = False) -> int:
    """Rows with changes waiting; ``with_rejected``: and the refused ones, as if requeued; ``with_everything``:
    and every row, as if all were queued (a dry run's previews)."""
    arms = _arms(with_rejected, with_everything)
    union = " UNION ALL ".join(arm.select for arm in arms)  # (each arm's columns are named as the outbox's)
    row = vault.db.conn.execute(f"SELECT count(*) FROM (SELECT DISTINCT table_name, row_id FROM ({union}))",
                                (vault.user_id,) * len(arms)).fetchone()
    return int(row[0])


#: Library rows of one batch, in bytes of their JSON: a batch is one query parameter (PostgreSQL's cap is 1 GiB).
BATCH_BYTES = 64 * 1024 * 1024
#: Files a batch sends, in bytes: once a batch holds this much (and BATCH_MIN_FILES files), rows with more files
#: wait for the next batch, so that rows reach the server as their files do, not after hours of uploads, and an
#: interrupted sync keeps what it committed.
BATCH_FILE_BYTES = 256 * 1024 * 1024
#: ... but never fewer files than the uploads run at once (a batch of one video would send it alone).
BATCH_MIN_FILES = 16
#: Entries a batch takes beyond its limit: every pending collection change and delete (see read_batch).
EXTRA_ENTRIES = 200_000


#: Whether the bucket lacks the object (key, size), as far as a sync knows without asking it; None: unknown.
BucketLacks = Callable[[str, int], "bool | None"]


def read_batch(vault: Vault, limit: int, after_seq: int, *, skip: set[int] | frozenset[int] = frozenset(),
               with_rejected: bool = False, with_everything: bool = False,
               bucket_lacks: BucketLacks | None = None) -> Batch | None:
    """The next outbox entries of this user, coalesced by row, with the rows' current state (one snapshot).

    A batch sends each row as it is now, which may rest on changes queued
    after the batch's ``limit`` entries: a library row moved into a collection
    created later, a name freed by a later rename, a hash freed by a later
    delete. So every batch also takes every pending collection change and
    every pending delete (up to :data:`EXTRA_ENTRIES`): then no row of a batch
    depends on a row the batch leaves out. Library rows stop at
    :data:`BATCH_BYTES` of JSON, and those whose files it sends at
    :data:`BATCH_FILE_BYTES` of files; the rest wait for the next batch. A
    row sends its file when ``bucket_lacks`` says the bucket lacks it (a
    sync's listing), or, not knowing, when the batch inserts it. ``skip``:
    entries already taken (a dry run reads on without acknowledging).
    ``with_rejected``: the refused entries too, after the outbox's, as
    :func:`requeue_rejected` would queue them; ``with_everything``: an entry
    for every row too, as :func:`queue_everything` would (a dry run changes
    nothing).
    """
    arms = _arms(with_rejected, with_everything)
    with vault.db.read() as conn:
        while True:
            read = _read(conn, arms, vault.user_id, after_seq, limit)
            if not read:
                return None
            after_seq = last_seq = read[-1][0]
            entries = [e for e in read if e[0] not in skip]
            if entries:
                break
        entries += [e for e in _entries_rested_on(conn, arms, vault.user_id, last_seq) if e[0] not in skip]
        newest: dict[tuple[str, str], tuple[str, str | None, int, str]] = {}
        for seq, table, row_id, op, path, queued_at in entries:
            previous = newest.get((table, row_id))
            # A deleted row's time (its last-writer-wins stamp) is that of its newest change, not of its last
            # entry: a refused edit queued again by --retry-rejected comes after the delete with an older time.
            stamp = max(queued_at, previous[3]) if previous else queued_at
            newest[(table, row_id)] = (op, path or (previous[1] if previous else None), seq, stamp)
        changes = Changes()
        files: dict[str, tuple[str, str, int, str]] = {}
        library_ids = [k[1] for k in newest if k[0] == "user_library"]
        collection_ids = [k[1] for k in newest if k[0] == "user_collections"]
        library_rows = {r["id"]: r for r in _rows(conn, "user_library", LIBRARY_COLUMNS, library_ids, vault.user_id)}
        collection_rows = {r["id"]: r for r in _rows(conn, "user_collections", COLLECTION_COLUMNS, collection_ids, vault.user_id)}
        library_bytes = file_bytes = file_count = 0
        inserting = {e[2] for e in entries if e[1] == "user_library" and e[3] == "insert"}
        left_out: set[tuple[str, str]] = set()
        invalid: dict[tuple[str, str], str] = {}
        for key, (_op, _path, _seq, queued_at) in newest.items():
            table, row_id = key
            if not _CANONICAL_UUID.fullmatch(row_id):  # a vault.db edited by hand: refused, the rest goes on
                invalid[key] = (f"the id {row_id!r} is not a UUID, which the server cannot take (was vault.db "
                                "edited by hand?); delete or mend that row")
                continue
            current = (library_rows if table == "user_library" else collection_rows).get(row_id)
            if current is None:
                target = changes.library_deletes if table == "user_library" else changes.collection_deletes
                target.append({"id": row_id, "deleted_at": queued_at})
            elif table == "user_library":
                size = len(current.json) if isinstance(current, JsonRow) else 0
                lacks = None if bucket_lacks is None else bucket_lacks(current["storage_path"],
                                                                        current["file_size_bytes"])
                sends_file = row_id in inserting if lacks is None else lacks
                if changes.library and (library_bytes + size > BATCH_BYTES or (
                        sends_file and file_bytes >= BATCH_FILE_BYTES and file_count >= BATCH_MIN_FILES)):
                    left_out.add(key)  # in the next batch (its entries stay in the outbox)
                    continue
                library_bytes += size
                if sends_file:
                    file_bytes += current["file_size_bytes"]
                    file_count += 1
                changes.library.append(current)
                files[row_id] = (vault.files.full_path(LIBRARY_BUCKET, current["storage_path"]), current["sha256"],
                                 current["file_size_bytes"], current["mime_type"])
            else:
                changes.collections.append(current)
    taken = [e for e in entries if (e[1], e[2]) not in left_out]
    if left_out:  # a dry run reads on from the first entry left out
        last_seq = min(e[0] for e in entries if (e[1], e[2]) in left_out) - 1
    inserted = {row_id for row_id in inserting if ("user_library", row_id) not in left_out}
    return Batch(
        seqs=[e[0] for e in taken], last_seq=last_seq, keys=[k for k in newest if k not in left_out], changes=changes,
        entries={k: v for k, v in newest.items() if k not in left_out}, files=files, inserted=inserted,
        invalid=invalid,
    )


#: Added to a refused entry's seq when a dry run reads it with the outbox: after every outbox entry, in order.
_REJECTED_SEQ_BASE = 1 << 48


#: ... and a row's entry when a dry run of --full reads every row as queued: after those, collections first.
_EVERY_COLLECTION_SEQ_BASE = 1 << 50
_EVERY_LIBRARY_SEQ_BASE = 1 << 51
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


@dataclass(frozen=True)
class _Arm:
    """One kind of entries read: rows of one table, each entry's seq ``base`` plus an indexed key of its row."""

    select: str  # SELECT seq, table_name, row_id, op, storage_path, queued_at FROM … WHERE user_id = ?
    key: str  # the key the seq counts by, read in its order (an index's, or the rowid)
    base: int
    table: str | None = None  # the one table its entries are of (None: either)
    deletes: bool = True  # whether it may hold deletes


_OUTBOX = _Arm("SELECT seq, table_name, row_id, op, storage_path, queued_at FROM sync_outbox WHERE user_id = ?",
               "seq", 0)
_REJECTED = _Arm(f"SELECT seq + {_REJECTED_SEQ_BASE}, table_name, row_id, op, storage_path, coalesce(queued_at, {_NOW})"
                 " FROM sync_rejected WHERE user_id = ?", "seq", _REJECTED_SEQ_BASE)
# "+user_id": read in rowid order, a page at a time (on the user_id index, each page would sort every row).
_EVERY_COLLECTION = _Arm(f"SELECT rowid + {_EVERY_COLLECTION_SEQ_BASE}, 'user_collections', id, 'update', NULL, {_NOW}"
                         " FROM user_collections WHERE +user_id = ?", "rowid", _EVERY_COLLECTION_SEQ_BASE,
                         "user_collections", deletes=False)
_EVERY_LIBRARY_ROW = _Arm(f"SELECT local_seq + {_EVERY_LIBRARY_SEQ_BASE}, 'user_library', id, 'update', NULL, {_NOW}"
                          " FROM user_library WHERE +user_id = ?", "local_seq", _EVERY_LIBRARY_SEQ_BASE,
                          "user_library", deletes=False)


def _arms(with_rejected: bool, with_everything: bool) -> list[_Arm]:
    """What a batch reads: the outbox; refused entries (a dry run of --retry-rejected); every row (of --full)."""
    return [_OUTBOX, *([_REJECTED] if with_rejected else []),
            *([_EVERY_COLLECTION, _EVERY_LIBRARY_ROW] if with_everything else [])]


def _read(conn: sqlite3.Connection, arms: list[_Arm], user_id: str, after_seq: int, limit: int,
          where: str = "") -> list[tuple[Any, ...]]:
    """Up to ``limit`` entries after ``after_seq``, in seq order, each arm read on its own key so that every page
    is a range of an index."""
    entries: list[tuple[Any, ...]] = []
    for arm in arms:
        entries += conn.execute(f"{arm.select} AND {arm.key} > ?{where} ORDER BY {arm.key} LIMIT ?",
                                (user_id, after_seq - arm.base, limit)).fetchall()
    return sorted(entries)[:limit]


def _entries_rested_on(conn: sqlite3.Connection, arms: list[_Arm], user_id: str,
                       last_seq: int) -> list[tuple[Any, ...]]:
    """The entries after ``last_seq`` a batch takes too: collection changes, deletes, and a deleted row's others."""
    mixed = [arm for arm in arms if arm.table is None]
    extra = _read(conn, mixed, user_id, last_seq, EXTRA_ENTRIES,
                  " AND (table_name = 'user_collections' OR op = 'delete')")
    extra += _read(conn, [arm for arm in arms if arm.table == "user_collections"], user_id, last_seq,
                   EXTRA_ENTRIES)
    extra = sorted(extra)[:EXTRA_ENTRIES]
    # A deleted library row's other entries go with its delete (else a later batch would send the delete
    # again), wherever they lie in the queue (after it too: a refused edit --retry-rejected queued again):
    # looked up by row (an index), not read through.
    deleted = sorted({e[2] for e in extra if e[1] == "user_library"})
    for arm in (arm for arm in arms if arm.deletes):
        for chunk in _chunks(deleted):
            extra += [e for e in conn.execute(
                f"{arm.select} AND table_name = 'user_library' AND op != 'delete'"
                f" AND row_id IN ({','.join('?' * len(chunk))})", (user_id, *chunk)) if e[0] > last_seq]
    return sorted(extra)


def _chunks(values: list[str]) -> Iterator[list[str]]:
    """``values`` in lists of at most 900: SQLite's bound parameters per statement, with room for a few more."""
    for start in range(0, len(values), 900):
        yield values[start:start + 900]


def _json_value(column: str) -> str:
    if column in ("tags", "generation_settings"):
        return f"json({column})"  # stored JSON text, embedded as JSON
    if column == "is_favorite":
        return "json(CASE WHEN is_favorite THEN 'true' ELSE 'false' END)"
    return column


#: A library row as the server's JSON object, built by SQLite (no per-row Python), with what the engine reads.
#: Beside the columns, the time of the row's collection (``collection_updated_at``; see statements.LIBRARY_UPSERT).
_LIBRARY_SELECT = ("SELECT json_object(" + ", ".join(f"'{c}', {_json_value(c)}" for c in LIBRARY_COLUMNS)
                   + ", 'collection_updated_at', (SELECT c.updated_at FROM user_collections c"
                   " WHERE c.id = user_library.collection_id)),"
                   " id, storage_path, sha256, file_size_bytes, mime_type, updated_at FROM user_library")


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _rows(conn: sqlite3.Connection, table: str, columns: tuple[str, ...], ids: list[str], user_id: str) -> Iterator[dict[str, Any]]:
    for start in range(0, len(ids), 900):
        chunk = ids[start:start + 900]
        marks = ",".join("?" * len(chunk))
        # "+user_id": look rows up by id; on user_id, SQLite would scan all the user's rows per chunk.
        where = f" WHERE +user_id = ? AND id IN ({marks})"
        if table == "user_library":
            for text, row_id, path, sha, size, mime, updated in conn.execute(_LIBRARY_SELECT + where, (user_id, *chunk)):
                yield JsonRow(text, id=row_id, storage_path=path, sha256=sha, file_size_bytes=size, mime_type=mime,
                              updated_at=updated)
            continue
        for row in conn.execute(f"SELECT {', '.join(columns)} FROM {table}" + where, (user_id, *chunk)):
            yield dict(zip(columns, row, strict=True))


def queue_everything(vault: Vault) -> None:
    """Queue an update of every collection and library row of the user (``sync --full``): a vault restored
    from a backup, or a server that lost rows, has nothing queued for rows the server no longer holds."""
    with vault.db.write() as conn:
        conn.execute("INSERT INTO sync_outbox (table_name, row_id, op, user_id) SELECT 'user_collections', id,"
                     " 'update', user_id FROM user_collections WHERE user_id = ? ORDER BY rowid", (vault.user_id,))
        conn.execute("INSERT INTO sync_outbox (table_name, row_id, op, user_id) SELECT 'user_library', id,"
                     " 'update', user_id FROM user_library WHERE user_id = ? ORDER BY local_seq", (vault.user_id,))


def requeue_rejected(vault: Vault) -> None:
    with vault.db.write() as conn:
        conn.execute(  # with the time each was queued at: a delete's is its last-writer-wins stamp
            "INSERT INTO sync_outbox (table_name, row_id, op, user_id, storage_path, queued_at)"
            " SELECT table_name, row_id, op, user_id, storage_path,"
            " coalesce(queued_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
            " FROM sync_rejected WHERE user_id = ? ORDER BY seq",
            (vault.user_id,),
        )
        conn.execute("DELETE FROM sync_rejected WHERE user_id = ?", (vault.user_id,))


def acknowledge(vault: Vault, batch: Batch, outcome: BatchResult, send_again: Iterable[str] = ()) -> None:
    """After the server commit: drop the batch's outbox entries; keep refused ones aside.

    A refusal kept from an earlier sync gives way to the newer state of its
    row this batch sent: dropped once that went through (written, or kept
    as older than the server's), replaced if it was refused too.
    ``send_again``: library ids queued again (after the batch: this sync
    sends them too).
    """
    with vault.db.write() as conn:
        earlier = {(t, r) for t, r in conn.execute(
            "SELECT table_name, row_id FROM sync_rejected WHERE user_id = ?", (vault.user_id,))}
        settled = earlier.intersection(batch.keys)
        conn.executemany("DELETE FROM sync_rejected WHERE user_id = ? AND table_name = ? AND row_id = ?",
                         [(vault.user_id, t, r) for t, r in settled])
        for (table, row_id), (sqlstate, message) in outcome.rejected.items():
            op, path, seq, queued_at = batch.entries[(table, row_id)]
            conn.execute(
                "INSERT OR REPLACE INTO sync_rejected (seq, table_name, row_id, op, user_id, storage_path, sqlstate,"
                " message, queued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, table, row_id, op, vault.user_id, path, sqlstate, message, queued_at),
            )
        conn.executemany("DELETE FROM sync_outbox WHERE seq = ?", [(s,) for s in batch.seqs])
        conn.executemany("INSERT INTO sync_outbox (table_name, row_id, op, user_id) VALUES ('user_library', ?,"
                         " 'update', ?)", [(row_id, vault.user_id) for row_id in send_again])
        sent = [row_id for (table, row_id), (op, *_rest) in batch.entries.items()
                if table == "user_collections" and op != "delete" and (table, row_id) not in outcome.rejected]
        _requeue_waiting_for(conn, vault.user_id, sent)


def _requeue_waiting_for(conn: sqlite3.Connection, user_id: str, collection_ids: list[str]) -> None:
    """Queue again the library entries refused because their collection was not on the server (23503, the
    collection refused itself, say for a name taken) now that it is: they go with this sync, no
    --retry-rejected needed."""
    for chunk in _chunks(collection_ids):
        waiting = ("FROM sync_rejected r JOIN user_library l ON l.id = r.row_id AND l.user_id = r.user_id"
                   " WHERE r.user_id = ? AND r.table_name = 'user_library' AND r.sqlstate = '23503'"
                   f" AND l.collection_id IN ({','.join('?' * len(chunk))})")
        conn.execute("INSERT INTO sync_outbox (table_name, row_id, op, user_id, storage_path, queued_at)"
                     " SELECT r.table_name, r.row_id, r.op, r.user_id, r.storage_path,"
                     f" coalesce(r.queued_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) {waiting} ORDER BY r.seq",
                     (user_id, *chunk))
        conn.execute(f"DELETE FROM sync_rejected WHERE seq IN (SELECT r.seq {waiting})", (user_id, *chunk))


def entries_in(vault: Vault, collection_ids: Iterable[str]) -> list[dict[str, str]]:
    """``id`` and ``updated_at`` of the user's library rows in these collections."""
    ids = sorted(collection_ids)
    out: list[dict[str, str]] = []
    for chunk in _chunks(ids):
        out += [{"id": r[0], "updated_at": r[1]} for r in vault.db.conn.execute(
            "SELECT id, updated_at FROM user_library WHERE user_id = ? AND collection_id IN"
            f" ({','.join('?' * len(chunk))}) ORDER BY local_seq", (vault.user_id, *chunk))]
    return out


def mark_synced(vault: Vault, dry_run: bool, remote: str) -> None:
    """A sync to ``remote`` (its :func:`~localvault.config.remote_identity`) ended: when, and to where."""
    if dry_run:
        return
    with vault.db.write() as conn:
        vault.db.set_meta(conn, f"last_sync:{vault.user_id}", utc_now())
        vault.db.set_meta(conn, f"synced_to:{vault.user_id}", remote)


def remote_changed(vault: Vault, remote: str) -> bool:
    """Whether this user's last sync went to another remote than ``remote``, or to one not recorded: what the
    outbox holds is relative to that one, and the new one holds none of it. A sync made by a localvault older than
    ``synced_to`` (whose own ``remote set`` recorded nothing) counts as another: sending everything once more is
    harmless, while trusting it lost every row that older version's switch of remote left behind."""
    synced_to = vault.db.get_meta(f"synced_to:{vault.user_id}")
    if synced_to is None:
        return vault.db.get_meta(f"last_sync:{vault.user_id}") is not None
    return synced_to != remote
