"""user_collections: named groups of library assets.

``asset_count`` is maintained by the database's triggers, never by this code.
A collection is named by its id or by its name (names are unique per user).
"""

from __future__ import annotations

import sqlite3
import uuid

from . import models, rows
from ._spelling import composed, spellings
from ._sqlite_errors import raising_vault_errors
from .db import Database
from .errors import DuplicateError, InvalidInputError, NotFoundError
from .models import Collection


def resolve(conn: sqlite3.Connection, user_id: str, ref: str, *, to_put_in: bool = False) -> str:
    """The id of this user's collection named by id or name; NotFoundError otherwise (``to_put_in``: an asset is
    to go in, so the error suggests creating it; a rename or a deletion of a collection gone does not)."""
    if not isinstance(ref, str):
        raise InvalidInputError(f"a collection is named by its name or id (text), not {type(ref).__name__}; "
                                "list them with 'localvault collections ls'")
    if not ref.strip():
        raise InvalidInputError("no collection was named (an empty name); give a collection's name or id")
    models.check_unicode(ref, "the collection's name")
    try:
        as_id = models.check_uuid(ref)
    except InvalidInputError:
        as_id = None
    if as_id is not None:
        row = conn.execute("SELECT id FROM user_collections WHERE id = ? AND user_id = ?", (as_id, user_id)).fetchone()
        if row:
            return str(row[0])
    row = named(conn, user_id, composed(ref.strip()))
    if row is None:
        create = "" if as_id is not None or not to_put_in else f"create it first ('localvault collections create \"{ref.strip()}\"'), or "
        raise NotFoundError(f"no collection {ref!r} in this vault; {create}list them with 'localvault collections ls'")
    return str(row[0])


def named(conn: sqlite3.Connection, user_id: str, name: str, *, besides: str | None = None) -> tuple[str] | None:
    """The row (its id) of this user's collection called ``name`` (composed), in either of its spellings
    (:func:`._spelling.spellings`), the composed one first; ``besides`` leaves out that collection."""
    forms = spellings(name)
    return conn.execute(  # type: ignore[no-any-return]
        f"SELECT id FROM user_collections WHERE user_id = ? AND {rows.matches('name', forms)} AND id IS NOT ?"
        " ORDER BY name = ? DESC LIMIT 1",
        (user_id, *forms, besides, name)).fetchone()


@raising_vault_errors("_db")
class Collections:
    """The current user's collections."""

    def __init__(self, db: Database, user_id: str) -> None:
        self._db = db
        self.user_id = user_id

    def create(self, name: str, description: str | None = None) -> Collection:
        """Make a new, empty collection; DuplicateError if the name is taken."""
        name = models.check_name(name)
        description = models.check_description(description)
        collection_id = str(uuid.uuid4())
        with self._db.write() as conn:
            self._check_free(conn, name)
            conn.execute(
                "INSERT INTO user_collections (id, user_id, name, description) VALUES (?, ?, ?, ?)",
                (collection_id, self.user_id, name, description),
            )
            return self.get(collection_id)  # in the transaction: what was committed, whatever comes next

    def _check_free(self, conn: sqlite3.Connection, name: str, besides: str | None = None) -> None:
        if named(conn, self.user_id, name, besides=besides):
            raise DuplicateError(f"a collection named {name!r} already exists; choose another name")

    def get(self, ref: str) -> Collection:
        """A collection of this user by name or id (with its exact ``asset_count``); NotFoundError otherwise."""
        conn = self._db.conn
        collection_id = resolve(conn, self.user_id, ref)
        row = conn.execute(f"SELECT {rows.COLLECTION_COLUMNS} FROM user_collections WHERE id = ?", (collection_id,)).fetchone()
        return rows.collection(row)

    def list(self) -> list[Collection]:
        """All collections of the user, by name."""
        found = self._db.conn.execute(
            f"SELECT {rows.COLLECTION_COLUMNS} FROM user_collections WHERE user_id = ? ORDER BY name COLLATE NOCASE, id",
            (self.user_id,),
        ).fetchall()
        return [rows.collection(r) for r in found]

    def rename(self, ref: str, new_name: str) -> Collection:
        """Give a collection (by name or id) a new name; DuplicateError if another collection has it."""
        new_name = models.check_name(new_name)
        with self._db.write() as conn:
            collection_id = resolve(conn, self.user_id, ref)
            current = conn.execute("SELECT name FROM user_collections WHERE id = ?", (collection_id,)).fetchone()[0]
            if current != new_name:
                self._check_free(conn, new_name, besides=collection_id)
                conn.execute("UPDATE user_collections SET name = ? WHERE id = ?", (new_name, collection_id))
            return self.get(collection_id)

    def describe(self, ref: str, description: str | None) -> Collection:
        """Set a collection's description (None clears it)."""
        description = models.check_description(description)
        with self._db.write() as conn:
            collection_id = resolve(conn, self.user_id, ref)
            conn.execute("UPDATE user_collections SET description = ? WHERE id = ? AND description IS NOT ?",
                         (description, collection_id, description))  # the same text: no change to sync
            return self.get(collection_id)

    def delete(self, ref: str) -> None:
        """Delete a collection; its assets stay in the library, outside any collection."""
        with self._db.spilling(), self._db.write() as conn:  # (its release of every entry is one statement)
            collection_id = resolve(conn, self.user_id, ref)
            conn.execute("DELETE FROM user_collections WHERE id = ?", (collection_id,))
