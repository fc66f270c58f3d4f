"""What a push checks on the server before it sends anything (used by :meth:`localvault.sync.remote.Remote.check`):
that the vault's user exists, that the role ``authenticated`` holds the privileges the push uses, and how far this
machine's clock is from the server's."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from ..errors import SyncError
from .report import clock_warning

log = logging.getLogger(__name__)

#: What the vault's pushes do, as the role ``authenticated``, on each table (SELECT: RETURNING, ON CONFLICT; the
#: server's record of deletions is read by the upserts and stamped by the deletes).
NEEDED_GRANTS = (*((f"public.{table}", privilege) for table in ("user_library", "user_collections")
                    for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE")),
                 ("localvault.deleted_rows", "SELECT"), ("localvault.deleted_rows", "UPDATE"))


def check_user(conn: psycopg.Connection[Any], user_id: str) -> None:
    """SyncError if ``auth.users`` has no such user; a role that may not read it (or no such table) cannot tell."""
    try:
        # Supabase's auth.users has row-level security and no policy: a role without BYPASSRLS would see no user
        # at all. With row_security off, such a role is refused instead (cannot tell). (This transaction only.)
        conn.execute("SET LOCAL row_security = off")
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM auth.users WHERE id = %s::uuid)", (user_id,)).fetchone()
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable):  # cannot tell: the push goes on
        row = None
    conn.rollback()
    if row is not None and not row[0]:
        raise SyncError(f"the vault's user {user_id} does not exist on the server (auth.users): sign that user "
                        "up in the app first (on a plain PostgreSQL, as its owner: INSERT INTO auth.users (id) VALUES "
                        f"('{user_id}')), or use a vault of an existing user")


#: The privileges of ``authenticated`` that the pushes need beyond the tables' (an SQL expression each, and what
#: to grant if it is false): the schema's USAGE, and EXECUTE of auth.uid(), which every RLS policy calls.
_OTHER_GRANTS = (
    ("has_schema_privilege('authenticated', 'public', 'USAGE')", "USAGE ON SCHEMA public"),
    ("has_schema_privilege('authenticated', 'localvault', 'USAGE')", "USAGE ON SCHEMA localvault"),
    ("has_function_privilege('authenticated', 'auth.uid()', 'EXECUTE')", "EXECUTE ON FUNCTION auth.uid()"),
)


def check_grants(conn: psycopg.Connection[Any]) -> None:
    """SyncError if the role ``authenticated`` lacks a privilege the pushes use: a server set-up problem that would
    otherwise refuse every row (42501, as row-level security refuses one); a server that cannot tell is let be.

    SELECT, INSERT and UPDATE may be granted column by column (Supabase's column-level security): any column
    granted counts, and a column left out is one row's refusal, as before.
    """
    table_checks = [
        (f"has_{'table' if privilege == 'DELETE' else 'any_column'}_privilege('authenticated', "
         f"'{table}', '{privilege}')", f"{privilege} ON {table}")
        for table, privilege in NEEDED_GRANTS]
    checks = [*table_checks, *_OTHER_GRANTS]
    try:
        answers = conn.execute("SELECT " + ", ".join(sql for sql, _grant in checks)).fetchone() or ()
    except psycopg.OperationalError:
        raise
    except psycopg.Error:  # no such role, table or function: the schema check has said what there is to say
        answers = ()
    conn.rollback()
    lacking = [grant for (_sql, grant), held in zip(checks, answers, strict=False) if held is False]
    if lacking:
        raise SyncError(f"the server's role 'authenticated' lacks {', '.join(lacking)}, which localvault's schema "
                        "grants (a set-up problem, not a row's): run 'GRANT " + "; GRANT ".join(
                            f"{grant} TO authenticated" for grant in lacking) + "' on the server, then sync again")


def clock_offset(conn: psycopg.Connection[Any]) -> float | None:
    """This machine's clock minus the server's, in seconds (positive: ahead), within half a round trip; None if
    the server would not tell (only informative: the push goes on). A gap worth it is logged as a warning
    (:func:`.report.clock_warning`), as a sync or ``status`` begins: a sync that fails later has said it too.

    Last writer wins compares the times of the edits, and a vault stamps its
    edits with this machine's clock, the web app with the server's.
    """
    before = local_clock()
    try:
        row = conn.execute("SELECT extract(epoch FROM pg_catalog.clock_timestamp())::float8").fetchone()
    except psycopg.OperationalError:
        raise
    except psycopg.Error:
        row = None
    after = local_clock()
    conn.rollback()
    offset = None if row is None or row[0] is None else (before + after) / 2 - float(row[0])
    if (warning := clock_warning(offset)) is not None:
        log.warning(warning)
    return offset


def local_clock() -> float:
    """This machine's clock (seconds since the epoch), the one the vault stamps its edits with."""
    return time.time()
