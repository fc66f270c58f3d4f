"""Cross-user attempts on the real server: through the sync path (a vault of user A forging its
local rows and outbox) and through direct SQL as ``authenticated`` with A's claims. All denied;
public assets readable by anon, private ones not.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from reliability.common import USER_A, USER_B, add_users, s3_client, tiny_png

from localvault import SyncError, Vault
from localvault.sync import Remote, status

DENIED = ("42501",)  # insufficient_privilege / RLS violation


@pytest.fixture
def world(pg_database: str, s3_bucket: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    add_users(pg_database, USER_A, USER_B)
    remote = Remote(pg_database, f"s3://{s3_bucket.name}", s3_bucket.storage_options)
    src = tmp_path / "src"
    src.mkdir()
    vaults = {}
    for user, salt in ((USER_A, 1), (USER_B, 2)):
        vault = Vault.create(tmp_path / f"vault-{salt}", user_id=user)
        col = vault.collections.create(f"col-{salt}")
        assets = []
        for n, visibility in enumerate(("private", "public")):
            path = src / f"{salt}-{n}.png"
            path.write_bytes(tiny_png(n, salt=100 + salt))
            assets.append(vault.library.add(path, title=f"{visibility} of {salt}", visibility=visibility,
                                            collection=col.id))
        vault.sync(remote)
        vaults[user] = (vault, col, assets)
    # What Supabase Storage would record for the objects (the sync writes S3 only).
    with psycopg.connect(pg_database, autocommit=True) as conn:
        for user, (_v, _c, assets) in vaults.items():
            for asset in assets:
                conn.execute("INSERT INTO storage.objects (bucket_id, name, owner) VALUES ('user-library', %s, %s)",
                             (asset.storage_path, user))
    yield {"dsn": pg_database, "remote": remote, "s3": s3_bucket, "vaults": vaults}
    remote.close()
    for vault, _c, _a in vaults.values():
        vault.close()


@contextmanager
def as_role(dsn: str, user: str | None, role: str = "authenticated") -> Iterator[psycopg.Connection[Any]]:
    """One transaction as Supabase runs a request: forged claims, then SET LOCAL ROLE. Rolled back."""
    with psycopg.connect(dsn) as conn:
        claims = {"role": role} if user is None else {"sub": user, "role": role}
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        conn.execute(f"SET LOCAL ROLE {role}")
        yield conn
        conn.rollback()


def _denied(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> str:
    """Run ``sql`` as A; it must fail with a privilege/RLS or integrity error. Returns the SQLSTATE."""
    with pytest.raises(psycopg.Error) as caught:
        with as_role(dsn, USER_A) as conn:
            conn.execute(sql, params)
    code = caught.value.sqlstate or ""
    assert code in DENIED or code.startswith("23"), (sql, code, caught.value)
    return code


def _affects_nothing(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> None:
    with as_role(dsn, USER_A) as conn:
        assert conn.execute(sql, params).rowcount == 0, sql


def _server_row(dsn: str, asset_id: str) -> dict[str, Any] | None:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("SELECT * FROM public.user_library WHERE id = %s", (asset_id,))
        row = cur.fetchone()
        return dict(zip([d.name for d in cur.description], row, strict=True)) if row else None


def _object(s3: Any, key: str) -> tuple[int, str | None] | None:
    try:
        head = s3_client(s3.storage_options).head_object(Bucket=s3.name, Key=key)
    except Exception:  # botocore's 404
        return None
    return head["ContentLength"], head.get("Metadata", {}).get("sha256")


def test_direct_sql_with_forged_claims_cannot_touch_another_users_data(world: dict[str, Any]) -> None:
    dsn = world["dsn"]
    _vb, b_col, (b_private, b_public) = world["vaults"][USER_B]
    _va, a_col, (a_private, _a_public) = world["vaults"][USER_A]
    attempts = 0
    # 1-2. Read: B's private row and its object are invisible to A; B's public row is readable.
    with as_role(dsn, USER_A) as conn:
        seen = {str(r[0]) for r in conn.execute("SELECT id FROM public.user_library WHERE user_id = %s", (USER_B,))}
        assert seen == {b_public.id}
        objects = {r[0] for r in conn.execute("SELECT name FROM storage.objects WHERE owner = %s", (USER_B,))}
        assert objects == {b_public.storage_path}
        assert conn.execute("SELECT count(*) FROM public.user_collections WHERE user_id = %s", (USER_B,)).fetchone()[0] == 0
    attempts += 3
    # 4. Insert a row owned by B.
    row = {k: v for k, v in _server_row(dsn, a_private.id).items()}
    forged = json.dumps([{**{k: (str(v) if v is not None and not isinstance(v, (int, bool, list, dict)) else v)
                             for k, v in row.items()}, "id": str(uuid.uuid4()), "user_id": USER_B,
                          "sha256": "f" * 64, "collection_id": None}], default=str)
    _denied(dsn, "INSERT INTO public.user_library SELECT * FROM jsonb_populate_recordset(NULL::public.user_library, %s::jsonb)",
            (forged,))
    # 5. Insert a collection owned by B.
    _denied(dsn, "INSERT INTO public.user_collections (user_id, name) VALUES (%s, 'mine now')", (USER_B,))
    # 6-7. Update and delete B's rows: nothing matches.
    _affects_nothing(dsn, "UPDATE public.user_library SET title = 'stolen' WHERE user_id = %s", (USER_B,))
    _affects_nothing(dsn, "DELETE FROM public.user_library WHERE user_id = %s", (USER_B,))
    _affects_nothing(dsn, "UPDATE public.user_collections SET name = 'stolen' WHERE id = %s", (b_col.id,))
    _affects_nothing(dsn, "DELETE FROM public.user_collections WHERE id = %s", (b_col.id,))
    # 8. Give one's own row to B.
    _denied(dsn, "UPDATE public.user_library SET user_id = %s WHERE id = %s", (USER_B, a_private.id))
    # 9. Move one's own asset into B's collection.
    _denied(dsn, "UPDATE public.user_library SET collection_id = %s WHERE id = %s", (b_col.id, a_private.id))
    # 10-12. storage.objects of B: insert into B's folder, update and delete B's objects.
    _denied(dsn, "INSERT INTO storage.objects (bucket_id, name, owner) VALUES ('user-library', %s, %s)",
            (f"{USER_B}/{uuid.uuid4()}.png", USER_A))
    _affects_nothing(dsn, "UPDATE storage.objects SET name = %s WHERE name = %s",
                     (f"{USER_A}/taken.png", b_private.storage_path))
    _affects_nothing(dsn, "DELETE FROM storage.objects WHERE owner = %s", (USER_B,))
    # 13. Forged role 'service_role' in the claims does not lift RLS for the authenticated role.
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)",
                     (json.dumps({"sub": USER_A, "role": "service_role"}),))
        conn.execute("SET LOCAL ROLE authenticated")
        assert conn.execute("SELECT count(*) FROM public.user_library WHERE id = %s", (b_private.id,)).fetchone()[0] == 0
        conn.rollback()
    attempts += 13
    # Anon: public assets (rows and objects) readable, private ones not; no writes.
    with as_role(dsn, None, "anon") as conn:
        rows = {str(r[0]) for r in conn.execute("SELECT id FROM public.user_library")}
        assert b_public.id in rows and b_private.id not in rows and a_private.id not in rows
        names = {r[0] for r in conn.execute("SELECT name FROM storage.objects")}
        assert b_public.storage_path in names and b_private.storage_path not in names
    with pytest.raises(psycopg.Error):
        with as_role(dsn, None, "anon") as conn:
            conn.execute("DELETE FROM public.user_library WHERE id = %s", (b_public.id,))
    attempts += 2
    # Everything of B is untouched.
    assert _server_row(dsn, b_private.id)["title"] == "private of 2"
    assert str(_server_row(dsn, b_private.id)["collection_id"]) == b_col.id
    print(f"\nsecurity (direct SQL): {attempts} cross-user attempts, all denied; public readable, private not")


def test_sync_path_cannot_touch_another_users_data(world: dict[str, Any]) -> None:
    dsn, remote, s3 = world["dsn"], world["remote"], world["s3"]
    vault_a, a_col, (a_private, a_public) = world["vaults"][USER_A]
    _vb, b_col, (b_private, b_public) = world["vaults"][USER_B]
    b_objects = {a.storage_path: _object(s3, a.storage_path) for a in (b_private, b_public)}
    assert all(b_objects.values())
    b_rows = {a.id: _server_row(dsn, a.id) for a in (b_private, b_public)}
    raw = sqlite3.connect(vault_a.root / "vault.db", isolation_level=None)
    raw.execute("PRAGMA foreign_keys = OFF")

    # 1. A's row claims B's asset id (overwrite B's row): refused by RLS, B's row intact.
    raw.execute("UPDATE user_library SET id = ?, title = 'stolen' WHERE id = ?", (b_private.id, a_private.id))
    report = vault_a.sync(remote)
    assert report.rejected == 1
    assert {r.sqlstate for r in status(vault_a, remote).rejected} <= {"42501"}
    # 2. A's row moved into B's collection (forged past the local foreign key): refused, server row unchanged.
    raw.execute("UPDATE user_library SET collection_id = ?, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 second')"
                " WHERE id = ?", (b_col.id, a_public.id))
    report = vault_a.sync(remote)
    assert report.rejected == 1 and str(_server_row(dsn, a_public.id)["collection_id"]) == a_col.id
    # 3. A forged delete of B's rows (outbox entries naming B's ids and object keys): nothing of B goes.
    for asset in (b_private, b_public):
        raw.execute("INSERT INTO sync_outbox (table_name, row_id, op, user_id, storage_path) VALUES"
                    " ('user_library', ?, 'delete', ?, ?)", (asset.id, USER_A, asset.storage_path))
    vault_a.sync(remote)
    # 4. A forged delete of B's collection.
    raw.execute("INSERT INTO sync_outbox (table_name, row_id, op, user_id) VALUES ('user_collections', ?, 'delete', ?)",
                (b_col.id, USER_A))
    vault_a.sync(remote)
    # 5. A's row whose storage path points into B's folder: the sync refuses to upload over B's object.
    fresh = world["vaults"][USER_A][0].library.add(_fresh_png(vault_a.root.parent), title="fresh")
    raw.execute("UPDATE user_library SET storage_path = ? WHERE id = ?", (b_private.storage_path, fresh.id))
    with pytest.raises(SyncError, match="outside the folder"):
        vault_a.sync(remote)
    # 6. The vault of A syncing as user B is only possible with B's vault; a forged user id in the outbox is ignored.
    raw.execute("INSERT INTO sync_outbox (table_name, row_id, op, user_id) VALUES ('user_library', ?, 'update', ?)",
                (b_private.id, USER_B))
    raw.execute("UPDATE user_library SET storage_path = ? WHERE id = ?", (f"{USER_A}/{fresh.id}.png", fresh.id))
    vault_a.sync(remote)
    raw.close()
    for asset_id, row in b_rows.items():
        assert _server_row(dsn, asset_id) == row, f"B's row {asset_id} changed"
    for key, head in b_objects.items():
        assert _object(s3, key) == head, f"B's object {key} changed or vanished"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT name FROM public.user_collections WHERE id = %s", (b_col.id,)).fetchone()[0] == "col-2"
        assert conn.execute("SELECT asset_count FROM public.user_collections WHERE id = %s", (b_col.id,)).fetchone()[0] == 2
    print("\nsecurity (sync path): 6 forged cross-user changes, all refused or ignored; B's rows and objects intact")


def _fresh_png(folder: Path) -> Path:
    path = folder / "fresh-a.png"
    path.write_bytes(tiny_png(99, salt=555))
    return path


def test_clients_get_only_what_row_level_security_governs(world: dict[str, Any]) -> None:
    """Found by acting as anon and authenticated with plain SQL (migration 5, and the compat layer):
    TRUNCATE ignores row-level security (anon emptied every user's objects, a user every user's library);
    TRIGGER runs a user's code in others' sessions; an id changed while moving assets in the same statement
    made asset_count drift; asset_count was writable; 'infinity' won every later edit; '..' in an object's
    name climbed out of the owner's folder. Supabase's default ALL on new tables is put in place first."""
    dsn = world["dsn"]
    _va, a_col, (a_private, _a_public) = world["vaults"][USER_A]
    with psycopg.connect(dsn, autocommit=True) as conn:  # what Supabase grants on every new table of public
        conn.execute("GRANT ALL ON public.user_library, public.user_collections TO authenticated")
    apply_schema_again(dsn)  # (migration 5 is applied again from nothing: its REVOKE must take that back)
    for role, sql in (("authenticated", "TRUNCATE public.user_library CASCADE"),
                      ("authenticated", "TRUNCATE public.user_collections CASCADE"),
                      ("anon", "TRUNCATE storage.objects"),
                      ("authenticated", "TRUNCATE storage.objects"),
                      ("authenticated", "CREATE TEMP TABLE t (x int); CREATE TRIGGER zz BEFORE INSERT ON "
                                        "public.user_library FOR EACH ROW EXECUTE FUNCTION "
                                        "public.localvault_touch_updated_at()"),
                      ("authenticated", "CREATE TRIGGER zz BEFORE INSERT ON storage.objects FOR EACH ROW "
                                        "EXECUTE FUNCTION public.localvault_touch_updated_at()")):
        with pytest.raises(psycopg.Error) as caught:
            with as_role(dsn, USER_A if role == "authenticated" else None, role) as conn:
                conn.execute(sql)
        assert caught.value.sqlstate == "42501", (role, sql, caught.value)
    # No id, owner, creation time or asset_count can be updated; the columns the sync sets can.
    for sql in ("UPDATE public.user_collections SET id = gen_random_uuid() WHERE id = %s",
                "UPDATE public.user_collections SET asset_count = 1000000 WHERE id = %s",
                "UPDATE public.user_collections SET created_at = now() WHERE id = %s"):
        _denied(dsn, sql, (a_col.id,))
    _denied(dsn, "UPDATE public.user_library SET id = gen_random_uuid() WHERE id = %s", (a_private.id,))
    _denied(dsn, "UPDATE public.user_library SET updated_at = 'infinity' WHERE id = %s", (a_private.id,))
    with as_role(dsn, USER_A) as conn:
        assert conn.execute("UPDATE public.user_library SET title = 'renamed', updated_at = now() WHERE id = %s",
                            (a_private.id,)).rowcount == 1
        assert conn.execute("UPDATE public.user_collections SET name = 'renamed' WHERE id = %s",
                            (a_col.id,)).rowcount == 1
    # A whole-row upsert as PostgREST makes it (every column sent named in the SET, the key included) works, of
    # a new row and of an existing one, as long as id, owner and creation time stay as they are.
    columns = ("id", "user_id", "name", "description", "created_at", "updated_at")
    upsert = (f"INSERT INTO public.user_collections ({', '.join(columns)}) VALUES (%s, %s, %s, %s, %s, %s) "
              f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in columns)}")
    with psycopg.connect(dsn) as conn:
        created = conn.execute("SELECT created_at FROM public.user_collections WHERE id = %s", (a_col.id,)).fetchone()[0]
    with as_role(dsn, USER_A) as conn:
        conn.execute(upsert, (str(uuid.uuid4()), USER_A, "new one", None, created, created))
        conn.execute(upsert, (a_col.id, USER_A, "upserted", "d", created, created))
    _denied(dsn, upsert, (a_col.id, USER_A, "upserted", "d", "2020-01-01T00:00:00Z", created))
    # Object names: the owner's folder, no '..', '.' or empty segment, no backslash.
    for name in (f"{USER_A}/../{USER_B}/x.png", f"{USER_A}/./x.png", f"{USER_A}//x.png", f"{USER_A}/",
                 f"{USER_A}/..\\{USER_B}\\x.png"):
        _denied(dsn, "INSERT INTO storage.objects (bucket_id, name, owner) VALUES ('user-library', %s, %s)",
                (name, USER_A))
    with as_role(dsn, USER_A) as conn:
        conn.execute("INSERT INTO storage.objects (bucket_id, name, owner) VALUES ('user-library', %s, %s)",
                     (f"{USER_A}/{uuid.uuid4()}.png", USER_A))


def apply_schema_again(dsn: str) -> None:
    """Migration 5 (and the compat layer) once more, as an upgrade from version 4 would run them."""
    from localvault.sync import schema

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM localvault.schema_version WHERE version = 5")
        for table in ("user_collections", "user_library", "workspace_assets"):
            conn.execute(f"ALTER TABLE public.{table} DROP CONSTRAINT IF EXISTS {table}_finite_times")
            conn.execute(f"DROP TRIGGER IF EXISTS {table}_keep_identity ON public.{table}")
        conn.execute("DROP FUNCTION IF EXISTS public.localvault_keep_identity()")
        # A version-4 server let a user store 'infinity': the migration mends it rather than stop on it.
        conn.execute("UPDATE public.user_library SET updated_at = 'infinity' WHERE user_id = %s", (USER_A,))
        conn.execute("UPDATE public.user_collections SET created_at = '-infinity' WHERE user_id = %s", (USER_A,))
    schema.apply_schema(dsn)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT bool_and(isfinite(updated_at)) FROM public.user_library").fetchone()[0]
        assert conn.execute("SELECT bool_and(isfinite(created_at)) FROM public.user_collections").fetchone()[0]
