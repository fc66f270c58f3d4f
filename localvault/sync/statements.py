"""The SQL a push sends to PostgreSQL (used by :mod:`localvault.sync.remote`): rows go as one JSON parameter per
statement, expanded on the server; last writer wins on ``updated_at``, deletions included (server migration 6)."""

from __future__ import annotations

LIBRARY_COLUMNS = (
    "id", "user_id", "asset_type", "storage_path", "file_size_bytes", "mime_type", "duration_seconds",
    "original_prompt", "model_used", "generation_seed", "generation_settings", "title", "tags", "is_favorite",
    "visibility", "collection_id", "original_asset_id", "thumbnail_path", "width", "height", "sha256",
    "created_at", "updated_at",
)
#: asset_count is never pushed: the server's trigger keeps its own.
COLLECTION_COLUMNS = ("id", "user_id", "name", "description", "created_at", "updated_at")

#: The vault user's record of a row deleted on the server at or after ``{time}`` (server migration 6).
_DELETED_SINCE = ("EXISTS (SELECT 1 FROM localvault.deleted_rows d WHERE d.user_id = {user} AND d.row_table = '{table}' "
                  "AND d.id = {id} AND d.deleted_at >= {time})")


def _upsert_sql(table: str, columns: tuple[str, ...], source: str, values: dict[str, str], also: str = "") -> str:
    names = ", ".join(columns)
    selected = ", ".join(values.get(c, f"s.{c}") for c in columns)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in ("id", "user_id", "created_at"))
    # Last writer wins on updated_at: a re-sent batch (equal updated_at) or an
    # older local edit changes nothing (local updated_at grows on every edit);
    # nor does an edit older than the row's deletion on the server.
    # Another user's row always goes on to the UPDATE, which RLS refuses (42501): were it skipped when older,
    # a crafted id would tell whether that row changed since a given time, and the vault's row would be
    # counted as kept by the server while it is not there at all.
    deleted_since = _DELETED_SINCE.format(user="s.user_id", table=table, id="s.id", time="s.updated_at")
    return (
        f"INSERT INTO public.{table} AS t ({names}) SELECT {selected} FROM {source} WHERE NOT {deleted_since} "
        f"ON CONFLICT (id) DO UPDATE SET {updates} "
        f"WHERE t.user_id IS DISTINCT FROM EXCLUDED.user_id OR t.updated_at < EXCLUDED.updated_at{also} "
        "RETURNING t.id"
    )


# A library row whose collection was deleted on the server after the vault's last edit of that collection
# (so the deletion wins, and the collection is not on the server) arrives outside any collection, as the
# server's ON DELETE SET NULL left the rows it held, rather than refused for good. Were the vault's
# collection newer than its deletion (being brought back, perhaps refused for now), the row waits for it,
# refused (23503) like any row whose collection is missing. The row's JSON carries the time of the vault's
# collection (``collection_updated_at``, which the table does not have), hence one JSON element per row.
_LIBRARY_COLLECTION = (
    "CASE WHEN s.collection_id IS NOT NULL "
    "AND NOT EXISTS (SELECT 1 FROM public.user_collections c WHERE c.id = s.collection_id) AND "
    + _DELETED_SINCE.format(user="s.user_id", table="user_collections", id="s.collection_id",
                            time="(j.doc->>'collection_updated_at')::timestamptz")
    + " THEN NULL ELSE s.collection_id END")
# A row the server only released from its collection (its deletion, ON DELETE SET NULL, keeps the row's
# updated_at; or the CASE above) is the vault's version less that: sent again once its collection is back
# (the vault's newer edit of the collection brought it back), it rejoins the collection.
_REJOINS = " OR (t.updated_at = EXCLUDED.updated_at AND t.collection_id IS NULL AND EXCLUDED.collection_id IS NOT NULL)"
LIBRARY_UPSERT = _upsert_sql(
    "user_library", LIBRARY_COLUMNS,
    "jsonb_array_elements(%s::jsonb) AS j(doc) CROSS JOIN LATERAL jsonb_populate_record(NULL::public.user_library, j.doc) AS s",
    {"collection_id": _LIBRARY_COLLECTION}, _REJOINS)
COLLECTION_UPSERT = _upsert_sql("user_collections", COLLECTION_COLUMNS,
                                "jsonb_populate_recordset(NULL::public.user_collections, %s::jsonb) AS s", {})
# A delete loses against a server row changed after the local delete.
DELETE_SQL = (
    "DELETE FROM public.{table} AS t USING jsonb_to_recordset(%s::jsonb) AS d(id uuid, deleted_at timestamptz) "
    "WHERE t.id = d.id AND t.updated_at <= d.deleted_at RETURNING t.id"
)
# ... and the server's record of the deletion takes the delete's own time, as the rows' updated_at do: an edit
# by another rig made after this delete must still win. The record of a row this delete removed (made by the
# trigger, at the server's time) takes it; that of a row deleted on the server before (by the web app) takes
# the later of the two deletions.
STAMP_DELETIONS_SQL = (
    "UPDATE localvault.deleted_rows AS r SET deleted_at = CASE WHEN r.id = ANY(%s::uuid[]) THEN d.deleted_at "
    "ELSE GREATEST(r.deleted_at, d.deleted_at) END "
    "FROM jsonb_to_recordset(%s::jsonb) AS d(id uuid, deleted_at timestamptz) "
    "WHERE r.user_id = %s AND r.row_table = '{table}' AND r.id = d.id "
    "AND NOT EXISTS (SELECT 1 FROM public.{table} t WHERE t.id = d.id)"
)
# Rows (id, updated_at) the server holds outside any collection with the vault's very version: released by a
# collection's deletion (a rejoin candidate; a row the web app moved out has a newer updated_at).
RELEASED_SQL = (
    "SELECT t.id FROM public.user_library t JOIN jsonb_to_recordset(%s::jsonb) AS s(id uuid, updated_at timestamptz)"
    " ON t.id = s.id WHERE t.collection_id IS NULL AND t.updated_at = s.updated_at"
)
# Rows (of those sent) that are on the server though deleted there once: brought back, by this vault or since.
REVIVED_SQL = (
    "SELECT r.id FROM localvault.deleted_rows r WHERE r.user_id = %s AND r.row_table = '{table}' "
    "AND r.id = ANY(%s::uuid[]) AND EXISTS (SELECT 1 FROM public.{table} c WHERE c.id = r.id AND c.user_id = r.user_id)"
)
# Before their objects go: the deletion records of the rows are held until the removal's transaction ends (an
# insert of one of them waits for it, server migration 7), and the rows still on the server are read.
HOLD_DELETIONS_SQL = (
    "SELECT 1 FROM localvault.deleted_rows WHERE user_id = %s AND row_table = 'user_library' "
    "AND id = ANY(%s::uuid[]) ORDER BY user_id, id FOR UPDATE"
)
# (The user's own rows: another user's public row that took a deleted row's id must not keep its object.)
LIBRARY_PRESENT_SQL = "SELECT id FROM public.user_library WHERE user_id = %s AND id = ANY(%s::uuid[])"
# Rows (id, updated_at) the server keeps deleted: not there, and deleted at or after that time.
KEPT_DELETED_SQL = (
    "SELECT s.id FROM jsonb_to_recordset(%s::jsonb) AS s(id uuid, updated_at timestamptz) "
    "WHERE NOT EXISTS (SELECT 1 FROM public.{table} t WHERE t.id = s.id) AND "
    + _DELETED_SINCE.format(user="%s::uuid", table="{table}", id="s.id", time="s.updated_at"))
