"""The server schema against a real PostgreSQL: migrations, triggers, RLS, storage."""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import errors as pgerrors
from psycopg import sql

from localvault.errors import OfflineError, SchemaVersionError, SyncError
from localvault.sync import schema as pgschema
from localvault.sync.schema import (
    SCHEMA_VERSION,
    apply_schema,
    check_schema_version,
    server_schema_version,
)

Conn = psycopg.Connection[Any]


# ------------------------------------------------------------------ helpers


@pytest.fixture
def db(pg_database: str) -> Iterator[Conn]:
    """Superuser connection (autocommit) to a fresh database with the schema."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        yield conn


@pytest.fixture
def users(db: Conn) -> tuple[uuid.UUID, uuid.UUID]:
    """Two users, A and B, in auth.users."""
    a, b = uuid.uuid4(), uuid.uuid4()
    db.execute("INSERT INTO auth.users (id, email) VALUES (%s, 'a@example.com'), (%s, 'b@example.com')", (a, b))
    return a, b


@contextmanager
def as_user(conn: Conn, user: uuid.UUID | None) -> Iterator[Conn]:
    """A transaction run as Supabase would run a request: claims + SET LOCAL ROLE."""
    role = "anon" if user is None else "authenticated"
    claims = {"role": role} if user is None else {"sub": str(user), "role": role}
    with conn.transaction():
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        yield conn


def add_collection(conn: Conn, user: uuid.UUID, name: str | None = None) -> uuid.UUID:
    cid = uuid.uuid4()
    conn.execute(
        "INSERT INTO public.user_collections (id, user_id, name) VALUES (%s, %s, %s)",
        (cid, user, name or f"c-{cid.hex[:8]}"),
    )
    return cid


def add_asset(
    conn: Conn,
    user: uuid.UUID,
    collection: uuid.UUID | None = None,
    visibility: str = "private",
    storage_path: str | None = None,
) -> uuid.UUID:
    aid = uuid.uuid4()
    conn.execute(
        """
        INSERT INTO public.user_library (id, user_id, asset_type, storage_path, file_size_bytes, mime_type,
            original_prompt, model_used, generation_seed, generation_settings, tags, visibility,
            collection_id, sha256)
        VALUES (%s, %s, 'image', %s, 1234, 'image/png', 'a red fox in snow', 'sdxl', 42,
            '{"steps": 30}', ARRAY['fox', 'snow'], %s, %s, %s)
        """,
        (aid, user, storage_path or f"{user}/{aid}.png", visibility, collection, secrets.token_hex(32)),
    )
    return aid


def count_of(conn: Conn, collection: uuid.UUID) -> int:
    row = conn.execute("SELECT asset_count FROM public.user_collections WHERE id = %s", (collection,)).fetchone()
    assert row is not None
    return int(row[0])


def real_count(conn: Conn, collection: uuid.UUID) -> int:
    row = conn.execute("SELECT count(*) FROM public.user_library WHERE collection_id = %s", (collection,)).fetchone()
    assert row is not None
    return int(row[0])


def add_workspace(conn: Conn, user: uuid.UUID, *, expired: bool, thumbnail: bool = True) -> tuple[uuid.UUID, str]:
    wid, job = uuid.uuid4(), uuid.uuid4()
    path = f"{user}/{job}/0.png"
    created, expires = ("now() - interval '8 days'", "now() - interval '1 day'") if expired else ("now()", "now() + interval '7 days'")
    conn.execute(
        sql.SQL(
            """
            INSERT INTO public.workspace_assets (id, user_id, asset_type, temp_storage_path, file_size_bytes,
                mime_type, job_id, asset_index, generation_seed, original_prompt, model_used, sha256,
                thumbnail_path, created_at, expires_at)
            VALUES (%s, %s, 'image', %s, 10, 'image/png', %s, 0, 1, 'p', 'm', %s, %s, {}, {})
            """
        ).format(sql.SQL(created), sql.SQL(expires)),
        (wid, user, path, job, secrets.token_hex(32), f"{user}/{job}/0.thumb.webp" if thumbnail else None),
    )
    conn.execute(
        "INSERT INTO storage.objects (bucket_id, name, owner) VALUES ('workspace-temp', %s, %s)", (path, user)
    )
    if thumbnail:
        conn.execute(
            "INSERT INTO storage.objects (bucket_id, name, owner) VALUES ('workspace-temp', %s, %s)",
            (f"{user}/{job}/0.thumb.webp", user),
        )
    return wid, path


# -------------------------------------------------------------- migrations


def test_apply_is_idempotent_and_recorded(pg_empty_database: str) -> None:
    messages: list[str] = []
    first = apply_schema(pg_empty_database, progress=messages.append)
    assert first.flavour == "postgres"
    assert first.compat_applied
    assert first.applied == tuple(range(1, SCHEMA_VERSION + 1))
    assert first.version == SCHEMA_VERSION
    assert any("0001_tables.sql" in m for m in messages)

    second = apply_schema(pg_empty_database)
    assert second.applied == ()
    assert second.version == SCHEMA_VERSION
    assert not second.compat_applied

    with psycopg.connect(pg_empty_database) as conn:
        rows = conn.execute("SELECT version, name, applied_at FROM localvault.schema_version ORDER BY version").fetchall()
        assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
        assert [r[1] for r in rows] == [m.name for m in pgschema.migrations()]
        assert all(r[2] is not None for r in rows)
        assert server_schema_version(conn) == SCHEMA_VERSION
        assert check_schema_version(conn) == SCHEMA_VERSION


def test_concurrent_appliers_apply_each_migration_once(pg_empty_database: str) -> None:
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(apply_schema(pg_empty_database))
        except Exception as exc:  # pragma: no cover - reported by the assert below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(r, pgschema.SchemaReport) for r in results), results
    applied = sorted(v for r in results for v in r.applied)
    assert applied == list(range(1, SCHEMA_VERSION + 1))
    with psycopg.connect(pg_empty_database) as conn:
        assert check_schema_version(conn) == SCHEMA_VERSION


#: Supabase's default privileges on what its `postgres` role creates in public (supabase/postgres's init scripts).
SUPABASE_DEFAULT_GRANTS = ("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS "
                           "TO anon, authenticated, service_role")


def _our_trigger_functions(conn: Conn) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT n.nspname || '.' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE p.prorettype = 'trigger'::regtype AND n.nspname IN ('public', 'localvault')"
        " AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)").fetchall()]


def test_no_client_can_attach_a_trigger_function_of_ours_to_a_table_of_its_own(pg_empty_database: str) -> None:
    """EXECUTE is what CREATE TRIGGER checks: Supabase's default privileges gave it to anon and authenticated by
    name, and on a temporary table of its own a client ran the SECURITY DEFINER count as its owner, setting any
    user's asset_count (a study of Supabase)."""
    with psycopg.connect(pg_empty_database, autocommit=True) as conn:
        conn.execute(sql.SQL(pgschema._compat_sql()))  # (the roles the default privileges name)
        conn.execute(SUPABASE_DEFAULT_GRANTS)
    apply_schema(pg_empty_database)
    with psycopg.connect(pg_empty_database, autocommit=True) as conn:
        functions = _our_trigger_functions(conn)
        assert {"public.user_library_count_assets", "localvault.record_deletion"} <= set(functions)
        for role in ("anon", "authenticated", "service_role"):
            for function in functions:
                with conn.transaction(force_rollback=True):
                    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                    conn.execute("CREATE TEMP TABLE mine (id uuid, collection_id uuid)")  # (its own: allowed)
                    with pytest.raises(pgerrors.InsufficientPrivilege, match="permission denied for function"), \
                            conn.transaction():
                        conn.execute(sql.SQL("CREATE TRIGGER t AFTER INSERT ON mine FOR EACH ROW EXECUTE FUNCTION "
                                             "{}()").format(sql.Identifier(*function.split("."))))


def test_schema_apply_with_nothing_pending_takes_back_a_grant_of_a_trigger_function(pg_database: str) -> None:
    """A server at the current version (applied before privileges.sql existed) is mended by the next apply,
    with no new version, which would make every older rig refuse the server."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("GRANT EXECUTE ON FUNCTION public.user_library_count_assets() TO anon, authenticated")
    report = apply_schema(pg_database)
    assert report.applied == () and report.version == SCHEMA_VERSION
    with psycopg.connect(pg_database) as conn:
        for role in ("anon", "authenticated"):
            assert not conn.execute("SELECT has_function_privilege(%s, 'public.user_library_count_assets()', "
                                    "'EXECUTE')", (role,)).fetchone()[0]


def test_schema_version_is_highest_migration() -> None:
    names = [m.name for m in pgschema.migrations()]
    assert names[0] == "0001_tables.sql"
    assert max(m.version for m in pgschema.migrations()) == SCHEMA_VERSION


def test_check_schema_version_rejects_newer_older_and_empty(pg_database: str, pg_empty_database: str) -> None:
    with psycopg.connect(pg_empty_database, autocommit=True) as conn:
        with pytest.raises(SchemaVersionError, match="no localvault schema"):
            check_schema_version(conn)
        assert server_schema_version(conn) == 0
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO localvault.schema_version (version, name) VALUES (%s, 'from the future')",
            (SCHEMA_VERSION + 1,),
        )
        with pytest.raises(SchemaVersionError, match="newer"):
            check_schema_version(conn)
        conn.execute("DELETE FROM localvault.schema_version WHERE version >= %s", (SCHEMA_VERSION,))
        with pytest.raises(SchemaVersionError, match="older"):
            check_schema_version(conn)
    # apply_schema refuses to touch a newer server
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("INSERT INTO localvault.schema_version (version, name) VALUES (%s, 'x'), (%s, 'y')",
                     (SCHEMA_VERSION, SCHEMA_VERSION + 5))
    with pytest.raises(SchemaVersionError, match="newer"):
        apply_schema(pg_database)


def test_check_schema_version_missing_tables(db: Conn) -> None:
    db.execute("DROP TABLE public.user_library CASCADE")
    with pytest.raises(SchemaVersionError, match="user_library"):
        check_schema_version(db)


def test_unreachable_server_is_offline_error() -> None:
    from servers import free_port

    with pytest.raises(OfflineError) as info:
        apply_schema(f"postgresql://u:secret@127.0.0.1:{free_port()}/x")
    message = str(info.value)
    assert "\n" not in message and "secret" not in message and "127.0.0.1" in message


# ------------------------------------------------------------ table shapes


def test_server_columns_and_buckets(db: Conn) -> None:
    cols = dict(
        db.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = 'user_library'"
        ).fetchall()
    )
    assert cols["id"] == "uuid" and cols["tags"] == "ARRAY" and cols["is_favorite"] == "boolean"
    assert cols["generation_seed"] == "bigint" and cols["generation_settings"] == "jsonb"
    assert cols["created_at"] == "timestamp with time zone" and cols["sha256"] == "text"
    assert "local_seq" not in cols
    ws = dict(
        db.execute(
            "SELECT column_name, column_default FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = 'workspace_assets'"
        ).fetchall()
    )
    assert "7 days" in ws["expires_at"]
    buckets = db.execute(
        "SELECT id, public, file_size_limit, allowed_mime_types FROM storage.buckets ORDER BY id"
    ).fetchall()
    mimes = ["image/jpeg", "image/png", "image/webp", "video/mp4"]
    assert buckets == [("user-library", False, 1073741824, mimes), ("workspace-temp", False, 1073741824, mimes)]
    indexes = {r[0] for r in db.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    assert {"workspace_assets_expires", "user_library_collection", "user_library_tags", "user_library_fts"} <= indexes
    quals = [r[0] for r in db.execute("SELECT coalesce(qual, with_check) FROM pg_policies WHERE schemaname = 'public'")]
    assert quals and all("auth.uid()" not in q or "SELECT auth.uid()" in q for q in quals)


# ------------------------------------------------------------- asset_count


def test_asset_count_insert_delete_and_move(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, _ = users
    c1, c2 = add_collection(db, a), add_collection(db, a)
    assets = [add_asset(db, a, c1) for _ in range(3)]
    add_asset(db, a)  # outside any collection
    assert (count_of(db, c1), count_of(db, c2)) == (3, 0)

    db.execute("DELETE FROM public.user_library WHERE id = %s", (assets[0],))
    assert count_of(db, c1) == 2

    db.execute("UPDATE public.user_library SET collection_id = %s WHERE id = %s", (c2, assets[1]))
    assert (count_of(db, c1), count_of(db, c2)) == (1, 1)

    # several rows in one statement, some moving, some not
    db.execute("UPDATE public.user_library SET collection_id = %s WHERE user_id = %s", (c2, a))
    assert (count_of(db, c1), count_of(db, c2)) == (0, 3)

    # an update that does not touch collection_id changes nothing
    db.execute("UPDATE public.user_library SET title = 'fox' WHERE user_id = %s", (a,))
    assert count_of(db, c2) == 3

    # out of a collection, and an upsert that moves a row
    db.execute("UPDATE public.user_library SET collection_id = NULL WHERE id = %s", (assets[1],))
    db.execute(
        "INSERT INTO public.user_library SELECT * FROM public.user_library WHERE id = %s "
        "ON CONFLICT (id) DO UPDATE SET collection_id = %s",
        (assets[2], c1),
    )
    assert (count_of(db, c1), count_of(db, c2)) == (1, 1)
    for c in (c1, c2):
        assert count_of(db, c) == real_count(db, c)


def test_collection_delete_keeps_assets(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, _ = users
    c1, c2 = add_collection(db, a), add_collection(db, a)
    kept = [add_asset(db, a, c1) for _ in range(2)]
    other = add_asset(db, a, c2)
    db.execute("DELETE FROM public.user_collections WHERE id = %s", (c1,))
    rows = db.execute(
        "SELECT id, collection_id, user_id FROM public.user_library WHERE id = ANY(%s)", (kept,)
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(kept)
    assert all(r[1] is None and r[2] == a for r in rows)
    assert count_of(db, c2) == 1
    db.execute("DELETE FROM public.user_library WHERE id = %s", (other,))
    assert count_of(db, c2) == 0


def test_asset_count_not_writable_by_clients(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, _ = users
    cid = uuid.uuid4()
    with as_user(db, a) as conn:  # a count given on insert is ignored
        conn.execute(
            "INSERT INTO public.user_collections (id, user_id, name, asset_count) VALUES (%s, %s, 'x', 99)", (cid, a)
        )
        add_asset(conn, a, cid)
        assert count_of(conn, cid) == 1
    for statement in ("UPDATE public.user_collections SET asset_count = 42, name = 'y' WHERE id = %s",
                      "INSERT INTO public.user_collections (id, user_id, name, asset_count) VALUES (%s, %s, 'y', 7) "
                      "ON CONFLICT (id) DO UPDATE SET asset_count = excluded.asset_count"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # no UPDATE on the column (migration 5)
            with as_user(db, a) as conn:
                conn.execute(statement, (cid, a) if "INSERT" in statement else (cid,))
    assert count_of(db, cid) == 1
    # even the superuser's direct writes are ignored
    db.execute("UPDATE public.user_collections SET asset_count = -5 WHERE id = %s", (cid,))
    assert count_of(db, cid) == real_count(db, cid) == 1


def test_deleting_a_user_cascades(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, b = users
    cid = add_collection(db, a)
    add_asset(db, a, cid)
    add_asset(db, b)
    db.execute("DELETE FROM auth.users WHERE id = %s", (a,))
    rows = db.execute("SELECT user_id FROM public.user_library").fetchall()
    assert rows == [(b,)]
    assert db.execute("SELECT count(*) FROM public.user_collections").fetchone() == (0,)
    # the user's rows leave no record of their deletion behind (migration 6), the other user's records stay
    db.execute("DELETE FROM public.user_library WHERE user_id = %s", (b,))
    assert db.execute("SELECT user_id FROM localvault.deleted_rows").fetchall() == [(b,)]


# ------------------------------------------------------ deletions recorded


def test_every_deletion_is_recorded_for_its_owner_alone(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    """Whoever deletes a library entry or collection (a vault, the web app as its user), the server records it
    (migration 6); a user reads only their own records, may only re-time them, and can neither add nor remove one."""
    a, b = users
    a_coll, a_asset, b_asset = add_collection(db, a), add_asset(db, a), add_asset(db, b)
    with as_user(db, a) as conn:
        conn.execute("DELETE FROM public.user_library WHERE id = %s", (a_asset,))
        conn.execute("DELETE FROM public.user_collections WHERE id = %s", (a_coll,))
    db.execute("DELETE FROM public.user_library WHERE id = %s", (b_asset,))
    records = db.execute("SELECT row_table, id, user_id FROM localvault.deleted_rows ORDER BY user_id = %s, row_table",
                         (b,)).fetchall()
    assert records == [("user_collections", a_coll, a), ("user_library", a_asset, a), ("user_library", b_asset, b)]
    with as_user(db, a) as conn:
        assert {r[0] for r in conn.execute("SELECT id FROM localvault.deleted_rows")} == {a_coll, a_asset}
        assert conn.execute("UPDATE localvault.deleted_rows SET deleted_at = now() - interval '1 day' "
                            "WHERE id = %s", (b_asset,)).rowcount == 0
        assert conn.execute("UPDATE localvault.deleted_rows SET deleted_at = now() - interval '1 day' "
                            "WHERE id = %s", (a_asset,)).rowcount == 1
    for statement in ("INSERT INTO localvault.deleted_rows (row_table, id, user_id) VALUES ('user_library', %s, %s)",
                      "DELETE FROM localvault.deleted_rows WHERE id = %s AND user_id = %s",
                      "UPDATE localvault.deleted_rows SET user_id = %s WHERE user_id = %s"):
        with pytest.raises(pgerrors.InsufficientPrivilege):
            with as_user(db, a) as conn:
                conn.execute(statement, (a_asset, a) if "INSERT" in statement or "DELETE" in statement else (b, a))
    with pytest.raises(pgerrors.InsufficientPrivilege):
        with as_user(db, None) as conn:
            conn.execute("SELECT * FROM localvault.deleted_rows")
    assert db.execute("SELECT count(*) FROM localvault.deleted_rows").fetchone() == (3,)


# --------------------------------------------------- same-user collections


def test_same_user_collection_enforced_even_for_superuser(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, b = users
    cb = add_collection(db, b)
    with pytest.raises(pgerrors.ForeignKeyViolation):
        add_asset(db, a, cb)
    mine = add_asset(db, a)
    with pytest.raises(pgerrors.ForeignKeyViolation):
        db.execute("UPDATE public.user_library SET collection_id = %s WHERE id = %s", (cb, mine))
    assert count_of(db, cb) == 0


# ---------------------------------------------------------------- updated_at


def test_updated_at_trigger(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, _ = users
    cid = add_collection(db, a)
    aid = add_asset(db, a)
    db.execute("UPDATE public.user_library SET updated_at = '2020-01-01T00:00:00Z' WHERE id = %s", (aid,))
    db.execute("UPDATE public.user_collections SET updated_at = '2020-01-01T00:00:00Z' WHERE id = %s", (cid,))
    # explicitly set values are kept (the sync sends the local edit time)
    row = db.execute("SELECT extract(year FROM updated_at) FROM public.user_library WHERE id = %s", (aid,)).fetchone()
    assert row == (2020,)

    db.execute("UPDATE public.user_library SET title = 'renamed' WHERE id = %s", (aid,))
    db.execute("UPDATE public.user_collections SET description = 'd' WHERE id = %s", (cid,))
    for table, key in (("user_library", aid), ("user_collections", cid)):
        fresh = db.execute(
            sql.SQL("SELECT updated_at > now() - interval '1 minute' FROM public.{} WHERE id = %s").format(
                sql.Identifier(table)
            ),
            (key,),
        ).fetchone()
        assert fresh == (True,), table

    # a re-sent identical row (sync upsert with the same updated_at) changes nothing
    db.execute("UPDATE public.user_library SET updated_at = '2021-01-01T00:00:00Z' WHERE id = %s", (aid,))
    db.execute(
        "INSERT INTO public.user_library AS t SELECT * FROM public.user_library WHERE id = %s "
        "ON CONFLICT (id) DO UPDATE SET title = excluded.title, updated_at = excluded.updated_at "
        "WHERE t.updated_at <= excluded.updated_at",
        (aid,),
    )
    row = db.execute("SELECT extract(year FROM updated_at) FROM public.user_library WHERE id = %s", (aid,)).fetchone()
    assert row == (2021,)

    # asset_count maintenance does not count as an edit of the collection
    db.execute("UPDATE public.user_collections SET updated_at = '2020-01-01T00:00:00Z' WHERE id = %s", (cid,))
    add_asset(db, a, cid)
    row = db.execute("SELECT extract(year FROM updated_at), asset_count FROM public.user_collections WHERE id = %s",
                     (cid,)).fetchone()
    assert row == (2020, 1)


# ----------------------------------------------------------------------- RLS


def test_rls_select_own_and_public(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, b = users
    a_private = add_asset(db, a)
    b_private = add_asset(db, b)
    b_public = add_asset(db, b, visibility="public")
    b_unlisted = add_asset(db, b, visibility="unlisted")
    add_collection(db, b)
    with as_user(db, a) as conn:
        seen = {r[0] for r in conn.execute("SELECT id FROM public.user_library")}
        assert seen == {a_private, b_public}
        assert b_private not in seen and b_unlisted not in seen
        assert conn.execute("SELECT count(*) FROM public.user_collections").fetchone() == (0,)


def test_rls_cannot_write_other_users_rows(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, b = users
    b_asset = add_asset(db, b, visibility="public")
    b_coll = add_collection(db, b)
    with pytest.raises(pgerrors.InsufficientPrivilege):
        with as_user(db, a) as conn:
            add_asset(conn, b)
    with pytest.raises(pgerrors.InsufficientPrivilege):
        with as_user(db, a) as conn:
            add_collection(conn, b)
    with as_user(db, a) as conn:
        assert conn.execute("UPDATE public.user_library SET title = 'mine' WHERE id = %s", (b_asset,)).rowcount == 0
        assert conn.execute("DELETE FROM public.user_library WHERE id = %s", (b_asset,)).rowcount == 0
        assert conn.execute("UPDATE public.user_collections SET name = 'z' WHERE id = %s", (b_coll,)).rowcount == 0
        assert conn.execute("DELETE FROM public.user_collections WHERE id = %s", (b_coll,)).rowcount == 0
    # nor give its own row away
    a_asset = add_asset(db, a)
    with pytest.raises(pgerrors.InsufficientPrivilege):
        with as_user(db, a) as conn:
            conn.execute("UPDATE public.user_library SET user_id = %s WHERE id = %s", (b, a_asset))
    row = db.execute("SELECT title, user_id FROM public.user_library WHERE id = %s", (b_asset,)).fetchone()
    assert row == (None, b)
    assert db.execute("SELECT count(*) FROM public.user_collections WHERE id = %s", (b_coll,)).fetchone() == (1,)


def test_rls_cannot_move_into_other_users_collection(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, b = users
    b_coll = add_collection(db, b)
    a_coll = add_collection(db, a)
    with as_user(db, a) as conn:
        mine = add_asset(conn, a, a_coll)
        assert count_of(conn, a_coll) == 1
    with pytest.raises(pgerrors.ForeignKeyViolation):
        with as_user(db, a) as conn:
            conn.execute("UPDATE public.user_library SET collection_id = %s WHERE id = %s", (b_coll, mine))
    with pytest.raises(pgerrors.ForeignKeyViolation):
        with as_user(db, a) as conn:
            add_asset(conn, a, b_coll)
    assert (count_of(db, a_coll), count_of(db, b_coll)) == (1, 0)


def test_anon_sees_only_public_rows(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, b = users
    add_asset(db, a)
    add_asset(db, a, visibility="unlisted")
    public = {add_asset(db, a, visibility="public"), add_asset(db, b, visibility="public")}
    add_collection(db, a)
    with as_user(db, None) as conn:
        assert {r[0] for r in conn.execute("SELECT id FROM public.user_library")} == public
    for table in ("user_collections", "workspace_assets"):
        with pytest.raises(pgerrors.InsufficientPrivilege):
            with as_user(db, None) as conn:
                conn.execute(sql.SQL("SELECT * FROM public.{}").format(sql.Identifier(table)))
    with pytest.raises(pgerrors.InsufficientPrivilege):
        with as_user(db, None) as conn:
            conn.execute("DELETE FROM public.user_library")


# ------------------------------------------------------------------- storage


def test_storage_policies_owner_folder(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, b = users
    with as_user(db, a) as conn:
        conn.execute("INSERT INTO storage.objects (bucket_id, name, owner) VALUES ('user-library', %s, %s)",
                     (f"{a}/x.png", a))
        conn.execute("INSERT INTO storage.objects (bucket_id, name, owner) VALUES ('workspace-temp', %s, %s)",
                     (f"{a}/job/0.png", a))
    with pytest.raises(pgerrors.InsufficientPrivilege):
        with as_user(db, a) as conn:
            conn.execute("INSERT INTO storage.objects (bucket_id, name, owner) VALUES ('user-library', %s, %s)",
                         (f"{b}/x.png", a))
    db.execute("INSERT INTO storage.objects (bucket_id, name, owner) VALUES ('user-library', %s, %s)",
               (f"{b}/secret.png", b))
    with as_user(db, a) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM storage.objects")}
        assert names == {f"{a}/x.png", f"{a}/job/0.png"}
        assert conn.execute("DELETE FROM storage.objects WHERE name = %s", (f"{b}/secret.png",)).rowcount == 0
        assert conn.execute("UPDATE storage.objects SET metadata = '{}' WHERE name = %s",
                            (f"{a}/x.png",)).rowcount == 1
    with pytest.raises(pgerrors.InsufficientPrivilege):
        with as_user(db, a) as conn:  # cannot move its object into B's folder
            conn.execute("UPDATE storage.objects SET name = %s WHERE name = %s", (f"{b}/y.png", f"{a}/x.png"))


def test_storage_public_library_objects_readable(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, b = users
    public_path, private_path = f"{b}/{uuid.uuid4()}.png", f"{b}/{uuid.uuid4()}.png"
    add_asset(db, b, visibility="public", storage_path=public_path)
    add_asset(db, b, visibility="private", storage_path=private_path)
    for name in (public_path, private_path):
        db.execute("INSERT INTO storage.objects (bucket_id, name, owner) VALUES ('user-library', %s, %s)", (name, b))
    for who in (None, a):
        with as_user(db, who) as conn:
            assert [r[0] for r in conn.execute("SELECT name FROM storage.objects")] == [public_path]


def test_a_public_row_cannot_publish_another_user_s_object(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    """A's public row pointing (storage or thumbnail path) at B's private object does not make it readable."""
    a, b = users
    private_path = f"{b}/{uuid.uuid4()}.png"
    add_asset(db, b, visibility="private", storage_path=private_path)
    db.execute("INSERT INTO storage.objects (bucket_id, name, owner) VALUES ('user-library', %s, %s)", (private_path, b))
    crafted = add_asset(db, a, visibility="public", storage_path=f"{a}/{uuid.uuid4()}.png")
    db.execute("UPDATE public.user_library SET thumbnail_path = %s WHERE id = %s", (private_path, crafted))
    add_asset(db, a, visibility="public", storage_path=private_path)
    for who in (None, a):
        with as_user(db, who) as conn:
            assert conn.execute("SELECT count(*) FROM storage.objects").fetchone() == (0,)
    with as_user(db, b) as conn:  # its owner still sees it
        assert [r[0] for r in conn.execute("SELECT name FROM storage.objects")] == [private_path]


def test_a_row_released_by_its_collection_s_deletion_keeps_updated_at(db: Conn,
                                                                     users: tuple[uuid.UUID, uuid.UUID]) -> None:
    """ON DELETE SET NULL must not stamp the row with the server's time: a vault's own later edits would lose."""
    a, _ = users
    collection = add_collection(db, a)
    asset = add_asset(db, a, collection=collection)
    db.execute("UPDATE public.user_library SET updated_at = '2020-01-01T00:00:00Z' WHERE id = %s", (asset,))
    with as_user(db, a) as conn:
        conn.execute("DELETE FROM public.user_collections WHERE id = %s", (collection,))
    row = db.execute("SELECT collection_id, updated_at FROM public.user_library WHERE id = %s", (asset,)).fetchone()
    assert row[0] is None
    assert row[1].isoformat() == "2020-01-01T00:00:00+00:00"
    with as_user(db, a) as conn:  # a direct edit still gets the server's time
        conn.execute("UPDATE public.user_library SET title = 'edited' WHERE id = %s", (asset,))
    assert db.execute("SELECT updated_at > now() - interval '1 minute' FROM public.user_library WHERE id = %s",
                      (asset,)).fetchone() == (True,)


def test_cleanup_expired_workspace_assets(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, b = users
    old_a, old_a_path = add_workspace(db, a, expired=True)
    old_b, _ = add_workspace(db, b, expired=True, thumbnail=False)
    fresh, fresh_path = add_workspace(db, a, expired=False)
    db.execute("INSERT INTO storage.objects (bucket_id, name) VALUES ('user-library', %s)", (old_a_path,))

    rows = db.execute(
        "SELECT asset_id, owner_id, object_path, objects_deleted FROM public.cleanup_expired_workspace_assets()"
    ).fetchall()
    assert {(r[0], r[3]) for r in rows} == {(old_a, 2), (old_b, 1)}
    assert {r[0] for r in db.execute("SELECT id FROM public.workspace_assets")} == {fresh}
    left = set(db.execute("SELECT bucket_id, name FROM storage.objects").fetchall())
    # the fresh asset's objects and the same name in another bucket are kept
    assert ("workspace-temp", fresh_path) in left
    assert ("user-library", old_a_path) in left
    assert len(left) == 3
    assert db.execute("SELECT count(*) FROM public.cleanup_expired_workspace_assets()").fetchone() == (0,)
    # clients cannot run it
    with pytest.raises(pgerrors.InsufficientPrivilege):
        with as_user(db, a) as conn:
            conn.execute("SELECT * FROM public.cleanup_expired_workspace_assets()")


def test_cleanup_when_storage_refuses_direct_deletes(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    """Supabase's storage.protect_delete refuses DELETEs on storage.objects (42501): rows still expire."""
    a, _ = users
    db.execute(
        """
        CREATE FUNCTION storage.protect_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'Direct deletion from storage tables is not allowed. Use the Storage API instead.'
                USING ERRCODE = '42501';
        END $$;
        CREATE TRIGGER protect_objects_delete BEFORE DELETE ON storage.objects
            FOR EACH STATEMENT EXECUTE FUNCTION storage.protect_delete();
        """
    )
    old, path = add_workspace(db, a, expired=True)
    rows = db.execute(
        "SELECT asset_id, object_path, thumbnail_object_path, objects_deleted "
        "FROM public.cleanup_expired_workspace_assets()"
    ).fetchall()
    assert rows == [(old, path, path.replace("0.png", "0.thumb.webp"), 0)]
    assert db.execute("SELECT count(*) FROM public.workspace_assets").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM storage.objects").fetchone() == (2,)


def test_collection_delete_by_its_owner_under_rls(db: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, _ = users
    with as_user(db, a) as conn:
        c1, c2 = add_collection(conn, a), add_collection(conn, a)
        assets = [add_asset(conn, a, c1) for _ in range(3)]
        conn.execute("UPDATE public.user_library SET collection_id = %s WHERE id = %s", (c2, assets[0]))
        assert (count_of(conn, c1), count_of(conn, c2)) == (2, 1)
        assert conn.execute("DELETE FROM public.user_collections WHERE id = %s", (c1,)).rowcount == 1
        nulls = conn.execute(
            "SELECT count(*) FROM public.user_library WHERE collection_id IS NULL AND id = ANY(%s)", (assets,)
        ).fetchone()
        assert nulls == (2,)
        assert count_of(conn, c2) == 1


def test_server_stop_is_offline_then_recovers(postgres_server: Any, pg_database: str) -> None:
    postgres_server.stop()
    try:
        with pytest.raises(OfflineError):
            apply_schema(pg_database)
    finally:
        postgres_server.start()
    assert apply_schema(pg_database).applied == ()


def test_a_migration_held_up_by_a_long_transaction_gives_up_its_wait_and_is_tried_again(
        pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On Supabase every policy statement of `postgres` takes ACCESS EXCLUSIVE locks on auth.* and storage.*
    until the commit: a migration queued behind a long transaction held every sign-in and upload behind it (15
    minutes in a Supabase-fidelity review). A migration now waits at most LOCK_TIMEOUT_MS for a lock, and is
    tried again; then it gives up with what to do."""
    locking = pgschema.Migration(SCHEMA_VERSION + 1, f"{SCHEMA_VERSION + 1:04d}_locking.sql",
                                 "LOCK TABLE public.user_collections IN ACCESS EXCLUSIVE MODE;")
    shipped = pgschema.migrations()
    monkeypatch.setattr(pgschema, "migrations", lambda: [*shipped, locking])
    monkeypatch.setattr(pgschema, "LOCK_TIMEOUT_MS", 300)
    monkeypatch.setattr(pgschema, "LOCK_RETRY_SECONDS", 0.1)
    monkeypatch.setattr(pgschema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    said: list[str] = []
    with psycopg.connect(pg_database) as reader:  # a long transaction that read the table
        reader.execute("SELECT count(*) FROM public.user_collections")
        with pytest.raises(SyncError, match="busy"):
            apply_schema(pg_database, progress=said.append)
        assert said.count(f"{locking.name}: its tables are busy; trying again") == pgschema.LOCK_ATTEMPTS - 1
        reader.rollback()
        done: list[Any] = []

        def release_soon() -> None:
            time.sleep(0.5)
            reader.rollback()

        reader.execute("SELECT count(*) FROM public.user_collections")
        releaser = threading.Thread(target=release_soon)
        releaser.start()
        done.append(apply_schema(pg_database))
        releaser.join()
    assert done[0].applied == (locking.version,)


def test_a_sync_role_that_row_security_hides_auth_users_from_cannot_tell_rather_than_says_no_user(
        pg_database: str) -> None:
    """Supabase's auth.users has row-level security and no policy: a least-privilege sync role granted SELECT on
    it (without BYPASSRLS) saw no user at all, and every sync stopped on "the vault's user does not exist"."""
    from localvault.sync.server_checks import check_user

    role = f"lv_sync_{secrets.token_hex(4)}"
    user = uuid.uuid4()
    with psycopg.connect(pg_database, autocommit=True) as admin:
        admin.execute("INSERT INTO auth.users (id) VALUES (%s)", (user,))
        admin.execute("ALTER TABLE auth.users ENABLE ROW LEVEL SECURITY")
        admin.execute(sql.SQL("CREATE ROLE {} NOBYPASSRLS").format(sql.Identifier(role)))
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA auth TO {0}; GRANT SELECT ON auth.users TO {0}").format(
            sql.Identifier(role)))
        try:
            with psycopg.connect(pg_database) as conn:
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
                conn.commit()
                check_user(conn, str(user))  # cannot tell: no SyncError
                assert conn.execute("SHOW row_security").fetchone() == ("on",)  # (SET LOCAL: its transaction only)
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)))
