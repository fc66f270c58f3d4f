"""user_library: what a user keeps, with title, tags, favourite, visibility and collection."""

from __future__ import annotations

import builtins
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from . import _write_intents as write_intents
from . import models, pending, rows
from ._search import SUBSTRING_FILTER, SearchQuery, search_query
from ._spelling import composed, tags_rarest_first
from ._sqlite_errors import raising_vault_errors
from .collections import resolve as resolve_collection
from .db import Database
from .errors import ConflictError, DuplicateError, InvalidInputError, NotFoundError, StorageError
from .files import LIBRARY_BUCKET, WORKSPACE_BUCKET, FileStore, StagedFile
from .ingest import prepare_with_values
from .models import GenerationInfo, LibraryAsset, Page, Visibility, VisibilityName
from .timestamps import format_time


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: Marks an argument of :meth:`Library.update` that should not change.
UNSET: Any = _Unset()


@raising_vault_errors("_db")
class Library:
    """The current user's library."""

    def __init__(self, db: Database, files: FileStore, user_id: str) -> None:
        self._db = db
        self._files = files
        self.user_id = user_id

    # ---------------------------------------------------------------- save

    def save(
        self,
        workspace_asset_id: str,
        *,
        title: str | None = None,
        tags: Iterable[str] = (),
        collection: str | None = None,
        favorite: bool = False,
        visibility: Visibility | VisibilityName = Visibility.private,
    ) -> LibraryAsset:
        """Keep a workspace asset for good: a library row and its own file (hard link or copy).

        The workspace asset stays until it expires; its expiry never touches the library's copy.
        DuplicateError if the same bytes are already kept; StorageError if the workspace file no longer
        holds the bytes its row recorded."""
        workspace_asset_id = models.check_uuid(workspace_asset_id, "workspace asset id")
        fields = self._check_fields(title, tags, favorite, visibility)
        asset_id = str(uuid.uuid4())
        linked: str | None = None
        staged: StagedFile | None = None
        note_id: int | None = None
        try:
            source, _ = self._save_source(self._db.conn, workspace_asset_id, collection)  # refusals before a copy
            relative = f"{self.user_id}/{asset_id}.{models.MediaType(source[3]).extension}"
            try:  # under a temporary name, before the transaction: a copy of 1 GiB must not hold other writers
                staged = self._files.stage_from(WORKSPACE_BUCKET, source[0], LIBRARY_BUCKET, self.user_id,
                                                source[12])
            except StorageError:
                self._save_source(self._db.conn, workspace_asset_id, None)  # expired meanwhile: NotFoundError
                raise
            # Noted before the rename: a process killed between the rename and the commit leaves no file.
            note_id = write_intents.note(self._db, LIBRARY_BUCKET, [relative])
            with self._db.write() as conn:
                now, collection_id = self._save_source(conn, workspace_asset_id, collection)
                if (now[0], now[12]) != (source[0], source[12]):
                    raise ConflictError(f"workspace asset {workspace_asset_id} changed while saved; save it again")
                source = now  # (its metadata as it is now: a late sidecar may have filled it meanwhile)
                linked = relative  # (before the rename: a Ctrl-C just after it leaves no file behind)
                self._files.commit(staged, relative)
                staged = None
                conn.execute(
                    "INSERT INTO user_library (id, user_id, asset_type, storage_path, file_size_bytes, mime_type,"
                    " duration_seconds, original_prompt, model_used, generation_seed, generation_settings, thumbnail_path,"
                    " width, height, sha256, title, tags, is_favorite, visibility, collection_id, original_asset_id)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (asset_id, self.user_id, source[1], relative, *source[2:12], source[12], *fields, collection_id,
                     workspace_asset_id),
                )
                saved = self.get(asset_id)  # in the transaction: what was committed, whatever comes next
                write_intents.drop(conn, note_id)
        except BaseException:
            if staged is not None:
                self._files.discard(staged)
            if linked is not None and not self._db.has_row("user_library", asset_id):  # committed: keep its file
                self._files.remove(LIBRARY_BUCKET, linked)
                linked = None
            if note_id is not None and linked is None:  # nothing linked, or removed: else left to a settle
                write_intents.drop_quietly(self._db, note_id)
            raise
        return saved

    def add(
        self,
        source: str | Path,
        *,
        prompt: str | None = None,
        seed: int | None = None,
        model: str | None = None,
        settings: dict[str, Any] | str | None = None,
        info: GenerationInfo | None = None,
        title: str | None = None,
        tags: Iterable[str] = (),
        collection: str | None = None,
        favorite: bool = False,
        visibility: Visibility | VisibilityName = Visibility.private,
        on_bytes: Callable[[int], None] | None = None,
    ) -> LibraryAsset:
        """Put a file straight into the library (no workspace step).

        ``prompt``, ``seed``, ``model`` and ``settings`` default to ``info``
        (what a rig embedded in the file or its sidecar, read from it unless
        given), then to "", 0, "unknown" and {}.
        """
        fields = self._check_fields(title, tags, favorite, visibility)
        asset_id = str(uuid.uuid4())
        prepared, values = prepare_with_values(self._files, source, LIBRARY_BUCKET, self.user_id, on_bytes, info,
                                               seed=seed, prompt=prompt, model=model, settings=settings)
        relative = f"{self.user_id}/{asset_id}.{prepared.extension}"
        committed = False
        note_id: int | None = None
        try:
            # Noted first: a process killed between the rename and the commit leaves nothing (_write_intents).
            note_id = write_intents.note(self._db, LIBRARY_BUCKET, [relative])
            with self._db.write() as conn:
                self._check_not_kept(conn, prepared.staged.sha256)
                collection_id = resolve_collection(conn, self.user_id, collection, to_put_in=True) if collection is not None else None
                self._files.commit(prepared.staged, relative)
                committed = True
                facts = prepared.facts
                conn.execute(
                    "INSERT INTO user_library (id, user_id, asset_type, storage_path, file_size_bytes, mime_type,"
                    " duration_seconds, original_prompt, model_used, generation_seed, generation_settings, width, height,"
                    " sha256, title, tags, is_favorite, visibility, collection_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (asset_id, self.user_id, facts.media_type.asset_type.value, relative, prepared.staged.size,
                     facts.media_type.value, facts.duration_seconds, values.prompt, values.model, values.seed,
                     values.settings, facts.width, facts.height,
                     prepared.staged.sha256, *fields, collection_id),
                )
                added = self.get(asset_id)  # in the transaction: what was committed, whatever comes next
                write_intents.drop(conn, note_id)
        except BaseException:
            if self._db.has_row("user_library", asset_id):  # a Ctrl-C during COMMIT, raised after it
                raise
            if committed:
                self._files.remove(LIBRARY_BUCKET, relative)
            else:
                self._files.discard(prepared.staged)
            if note_id is not None:  # (removed above; if that failed, the error goes up and the note stays)
                write_intents.drop_quietly(self._db, note_id)
            raise
        return added

    @staticmethod
    def _check_fields(title: str | None, tags: Iterable[str], favorite: bool, visibility: Visibility | VisibilityName) -> tuple[Any, ...]:
        if not isinstance(favorite, bool):
            raise InvalidInputError(f"favorite must be true or false, not {favorite!r}")
        return (models.check_title(title), json.dumps(models.check_tags(tags), ensure_ascii=False), int(favorite),
                models.check_visibility(visibility).value)

    def _save_source(self, conn: sqlite3.Connection, workspace_asset_id: str, collection: str | None,
                     ) -> tuple[tuple[Any, ...], str | None]:
        """The workspace row :meth:`save` keeps (path, type, size, …, sha256) and the collection's id."""
        source = conn.execute(
            "SELECT temp_storage_path, asset_type, file_size_bytes, mime_type, duration_seconds, original_prompt,"
            " model_used, generation_seed, generation_settings, thumbnail_path, width, height, sha256"
            " FROM workspace_assets WHERE id = ? AND user_id = ?", (workspace_asset_id, self.user_id)).fetchone()
        if source is None:
            kept = conn.execute("SELECT 1 FROM user_library WHERE id = ? AND user_id = ?",
                                (workspace_asset_id, self.user_id)).fetchone()
            raise NotFoundError(f"no workspace asset {workspace_asset_id} in this vault; " + (
                f"it is a library asset already (kept): 'localvault update {workspace_asset_id}' edits it"
                if kept else "see 'localvault ls workspace'"))
        self._check_not_kept(conn, source[12])
        collection_id = resolve_collection(conn, self.user_id, collection, to_put_in=True) if collection is not None else None
        return tuple(source), collection_id

    def _check_not_kept(self, conn: sqlite3.Connection, sha256: str) -> None:
        if row := conn.execute("SELECT id FROM user_library WHERE user_id = ? AND sha256 = ?",
                               (self.user_id, sha256)).fetchone():
            raise DuplicateError(f"this file is already in the library as {row[0]}; nothing was added")

    # ---------------------------------------------------------------- read

    def get(self, asset_id: str) -> LibraryAsset:
        """One library asset of this user; NotFoundError otherwise (also for another user's id)."""
        asset_id = models.check_uuid(asset_id, "library asset id")
        row = self._db.conn.execute(
            f"SELECT {rows.LIBRARY_COLUMNS} FROM user_library WHERE id = ? AND user_id = ?", (asset_id, self.user_id)
        ).fetchone()
        if row is None:
            raise _not_in_library(self._db.conn, asset_id, self.user_id)
        return rows.library_asset(row)

    def find_sha256(self, sha256: str) -> LibraryAsset | None:
        """This user's library asset holding these bytes (a hex sha256); None if none."""
        row = self._db.conn.execute(
            f"SELECT {rows.LIBRARY_COLUMNS} FROM user_library WHERE user_id = ? AND sha256 = ?",
            (self.user_id, models.check_sha256(sha256)),
        ).fetchone()
        return rows.library_asset(row) if row else None

    def count(self) -> int:
        """How many library assets this user has."""
        return int(self._db.conn.execute("SELECT count(*) FROM user_library WHERE user_id = ?", (self.user_id,)).fetchone()[0])

    def file_path(self, asset: LibraryAsset | str) -> str:
        """Where the asset's file lives on the vault's filesystem (``asset``: the asset, or its id)."""
        given = models.asset_given(asset, LibraryAsset, self.get, partial(rows.held, self._db.conn, "user_library",
                                                                         self.user_id))
        return self._files.full_path(LIBRARY_BUCKET, given.storage_path)

    def list(self, *, tags: Iterable[str] = (), favorite: bool | None = None, collection: str | None = None,
             search: str | None = None, limit: int = 50, cursor: str | None = None) -> Page[LibraryAsset]:
        """A page of the library, newest first, filtered by tags (all must match),
        favourite, collection and full-text ``search`` over prompt, title and tags.

        Search results are ordered by recency of saving (not by bm25 rank), so a
        word found in most prompts still answers in milliseconds.
        """
        limit = rows.check_limit(limit)
        tag_list = models.check_tags(tags)
        conn = self._db.conn
        # A search reads rows by their rowid (the full-text index's, or newest first): "+" keeps SQLite off the
        # user_id index, which would read and sort every row of the user.
        filters: builtins.list[str] = ["+l.user_id = ?" if search is not None else "l.user_id = ?"]
        params: builtins.list[Any] = [self.user_id]
        if favorite is not None:
            if not isinstance(favorite, bool):
                raise InvalidInputError(f"favorite must be true, false or None, not {favorite!r}")
            filters.append("l.is_favorite = ?")
            params.append(int(bool(favorite)))
        if collection is not None:
            filters.append("l.collection_id = ?")
            params.append(resolve_collection(conn, self.user_id, collection))
        tagged = tags_rarest_first(conn, self.user_id, tag_list, count=len(tag_list) > 1 or search is not None)
        for held, spellings in tagged[1:] if not search else tagged:
            filters.append("0" if not held else "EXISTS (SELECT 1 FROM library_tags t2 WHERE t2.library_seq"
                           f" = l.local_seq AND {rows.matches('t2.tag', spellings)})")  # ("0": SQLite reads no row)
            params += spellings if held else ()
        if search is not None:
            return self._search_page(search_query(search), filters, params, limit, cursor)
        if tagged:
            source = "library_tags t JOIN user_library l ON l.local_seq = t.library_seq"
            spellings = tagged[0][1]
            filters[0:0] = ["t.user_id = ?", rows.matches("t.tag", spellings)]
            params[0:0] = [self.user_id, *spellings]
            order = ("t.created_at", "t.id")
        else:
            source, order = "user_library l", ("l.created_at", "l.id")
        if cursor:
            created_at, last_id = rows.decode_cursor(cursor, "library", (rows.CURSOR_TIME, rows.CURSOR_ID))
            filters.append(f"({order[0]}, {order[1]}) < (?, ?)")
            params += [created_at, last_id]
        distinct = "DISTINCT " if tagged and len(tagged[0][1]) > 1 else ""  # (an entry may hold both spellings)
        found = conn.execute(
            f"SELECT {distinct}{_prefixed(rows.LIBRARY_COLUMNS)} FROM {source} WHERE {' AND '.join(filters)}"
            f" ORDER BY {order[0]} DESC, {order[1]} DESC LIMIT ?",
            (*params, limit + 1),
        ).fetchall()
        items = [rows.library_asset(r) for r in found[:limit]]
        more = len(found) > limit
        return Page(items=items, next_cursor=rows.encode_cursor("library", format_time(items[-1].created_at), items[-1].id)
                    if more else None)

    def _search_page(self, query: SearchQuery, filters: builtins.list[str], params: builtins.list[Any], limit: int,
                     cursor: str | None) -> Page[LibraryAsset]:
        filters = [*filters, *(SUBSTRING_FILTER for _ in query.substrings)]
        params = [*params, *(p for word in query.substrings for p in (word, word, word))]
        if query.match is not None:
            source, seq = "library_fts f JOIN user_library l ON l.local_seq = f.rowid", "f.rowid"
            filters.insert(0, "library_fts MATCH ?")
            params.insert(0, query.match)
        else:  # substrings only: the rows newest first, until the page is full
            source, seq = "user_library l", "l.local_seq"
        if cursor:
            (last_seq,) = rows.decode_cursor(cursor, "library search", (int,))
            filters.append(f"{seq} < ?")  # (on the full-text index's rowid, FTS5 starts its scan there)
            params.append(last_seq)
        try:
            found = self._db.conn.execute(
                f"SELECT {_prefixed(rows.LIBRARY_COLUMNS)}, l.local_seq FROM {source} WHERE {' AND '.join(filters)}"
                f" ORDER BY {seq} DESC LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
        except sqlite3.OperationalError as exc:
            raise InvalidInputError(f"cannot search for {' '.join(filter(None, (query.match, *query.substrings)))!r}:"
                                    f" {exc}") from None
        items = [rows.library_asset(r[:-1]) for r in found[:limit]]
        more = len(found) > limit
        return Page(items=items, next_cursor=rows.encode_cursor("library search", found[limit - 1][-1]) if more else None)

    # -------------------------------------------------------------- update

    def update(
        self,
        asset_id: str,
        *,
        title: str | None = UNSET,
        tags: Iterable[str] = UNSET,
        add_tags: Iterable[str] = (),
        remove_tags: Iterable[str] = (),
        favorite: bool = UNSET,
        visibility: Visibility | VisibilityName = UNSET,
        collection: str | None = UNSET,
    ) -> LibraryAsset:
        """Change an asset's fields; arguments left UNSET stay as they are.

        ``collection`` moves the asset (a name or id; None takes it out of any
        collection); counts follow in the same transaction.
        """
        asset_id = models.check_uuid(asset_id, "library asset id")
        changes: dict[str, Any] = {}
        if title is not UNSET:
            changes["title"] = models.check_title(title)
        if favorite is not UNSET:
            if not isinstance(favorite, bool):
                raise InvalidInputError(f"favorite must be true or false, not {favorite!r}")
            changes["is_favorite"] = int(favorite)
        if visibility is not UNSET:
            changes["visibility"] = models.check_visibility(visibility).value
        new_tags = models.check_tags(tags) if tags is not UNSET else None
        added, removed = models.check_tags(add_tags), models.check_tags(remove_tags)
        with self._db.write() as conn:
            row = conn.execute(f"SELECT {', '.join(_UPDATABLE)} FROM user_library WHERE id = ? AND user_id = ?",
                               (asset_id, self.user_id)).fetchone()
            if row is None:
                raise _not_in_library(conn, asset_id, self.user_id)
            current = dict(zip(_UPDATABLE, row, strict=True))
            if new_tags is not None or added or removed:
                result = list(new_tags if new_tags is not None else map(composed, json.loads(current["tags"])))
                result += [t for t in added if t not in result]
                result = [t for t in result if t not in removed]
                if len(result) > models.MAX_TAGS:  # (check_tags would say "given": these are the asset's)
                    raise InvalidInputError(f"the asset would hold {len(result)} tags; it may hold at most "
                                            f"{models.MAX_TAGS}: remove some (remove_tags, --remove-tag)")
                result = models.check_tags(result)
                if result != json.loads(current["tags"]):
                    changes["tags"] = json.dumps(result, ensure_ascii=False)
            if collection is not UNSET:
                changes["collection_id"] = resolve_collection(conn, self.user_id, collection, to_put_in=True) if collection is not None else None
            # A value already there is no change: no UPDATE, so no outbox entry and no newer updated_at
            # (which would win over a later edit made on the server).
            changes = {column: value for column, value in changes.items()
                       if column == "tags" or current[column] != value}
            if changes:
                assignments = ", ".join(f"{column} = ?" for column in changes)
                conn.execute(f"UPDATE user_library SET {assignments} WHERE id = ?", (*changes.values(), asset_id))
            return self.get(asset_id)  # in the transaction: what was committed, whatever comes next

    def move(self, asset_id: str, collection: str | None) -> LibraryAsset:
        """Move an asset into a collection (by name or id), or out of any with None."""
        return self.update(asset_id, collection=collection)

    def delete(self, asset_id: str) -> None:
        """Remove an asset from the library: its row now, its file right after."""
        asset_id = models.check_uuid(asset_id, "library asset id")
        with self._db.write() as conn:
            row = conn.execute(
                "DELETE FROM user_library WHERE id = ? AND user_id = ? RETURNING storage_path", (asset_id, self.user_id)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no library asset {asset_id} in this vault")
            pending.queue_delete(conn, LIBRARY_BUCKET, row[0])
        pending.drain_after_commit(self._db, self._files)


#: The columns :meth:`Library.update` may change.
_UPDATABLE = ("title", "is_favorite", "visibility", "tags", "collection_id")


def _prefixed(columns: str) -> str:
    return ", ".join(f"l.{c.strip()}" for c in columns.split(","))


def _not_in_library(conn: sqlite3.Connection, asset_id: str, user_id: str) -> NotFoundError:
    """The error for an id that is not one of the user's library assets, pointing at what to do with it."""
    staged = conn.execute("SELECT 1 FROM workspace_assets WHERE id = ? AND user_id = ?", (asset_id, user_id)).fetchone()
    hint = (f"it is a workspace asset: keep it with 'localvault save {asset_id}' first" if staged
            else "list them with 'localvault ls library'")
    return NotFoundError(f"no library asset {asset_id} in this vault; {hint}")
