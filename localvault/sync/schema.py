"""The server schema: apply the PostgreSQL migrations and check their version.

The SQL ships as package data in ``localvault/schema/postgres``:

* ``compat/0000_supabase_compat.sql`` gives a plain PostgreSQL what Supabase
  already has (roles ``anon``/``authenticated``/``service_role``, ``auth.users``,
  ``auth.uid()``, ``storage.buckets``/``storage.objects``…). It is idempotent and
  applied only on a plain PostgreSQL, before any pending migration.
* ``NNNN_name.sql`` are the numbered migrations. Each is applied once, in its own
  transaction, and recorded in ``localvault.schema_version``.
* ``privileges.sql`` is re-asserted by every apply, after the migrations: idempotent
  privileges no client depends on, which therefore change no version (a newer
  server's version makes older clients refuse it until upgraded).

Two appliers never race: every transaction of :func:`apply_schema` first takes
the transaction-level advisory lock :data:`ADVISORY_LOCK_KEY` and re-reads the
applied versions under it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Final, Literal

import psycopg
from psycopg import sql

from ..config import check_database_url
from ..errors import OfflineError, SchemaVersionError, SyncError
from .connection import connect, describe

if TYPE_CHECKING:  # importlib.resources.abc is Python >= 3.11
    from importlib.abc import Traversable

__all__ = [
    "ADVISORY_LOCK_KEY",
    "SCHEMA_VERSION",
    "VERSION_TABLE",
    "Migration",
    "SchemaReport",
    "apply_schema",
    "check_schema_version",
    "connect",
    "detect_flavour",
    "migrations",
    "server_schema_version",
]

Flavour = Literal["supabase", "postgres"]
Progress = Callable[[str], object]

#: Key of the advisory lock that serialises schema appliers (b"lvschema").
ADVISORY_LOCK_KEY: Final[int] = 0x6C76736368656D61
#: The table recording the applied migrations (in the schema ``localvault``).
VERSION_TABLE: Final[str] = "localvault.schema_version"
#: A migration waits at most this long for each lock it takes, and is tried this many times, LOCK_RETRY_SECONDS
#: times its attempt's number apart (see _apply_migration).
LOCK_TIMEOUT_MS: Final[int] = 2000
LOCK_ATTEMPTS: Final[int] = 5
LOCK_RETRY_SECONDS: Final[float] = 1.0
#: The tables a usable server schema has.
REQUIRED_TABLES: Final[tuple[str, ...]] = (
    "public.user_collections",
    "public.workspace_assets",
    "public.user_library",
)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")
_COMPAT_FILE = "0000_supabase_compat.sql"
_PRIVILEGES_FILE = "privileges.sql"

_VERSION_TABLE_DDL = """
CREATE SCHEMA IF NOT EXISTS localvault;
CREATE TABLE IF NOT EXISTS localvault.schema_version (
    version    integer PRIMARY KEY CHECK (version > 0),
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
GRANT USAGE ON SCHEMA localvault TO PUBLIC;
GRANT SELECT ON localvault.schema_version TO PUBLIC;
"""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file of ``localvault/schema/postgres``."""

    version: int
    name: str
    sql: str


@dataclass(frozen=True)
class SchemaReport:
    """What :func:`apply_schema` found and did."""

    #: ``"supabase"`` for a Supabase project, ``"postgres"`` for a plain server.
    flavour: Flavour
    #: Versions applied by this call, in order (empty when already up to date).
    applied: tuple[int, ...] = field(default_factory=tuple)
    #: Highest version recorded on the server after the call.
    version: int = 0
    #: Whether the Supabase compatibility layer was (re)applied by this call.
    compat_applied: bool = False


def _schema_dir() -> Traversable:
    return resources.files("localvault") / "schema" / "postgres"


def migrations() -> list[Migration]:
    """Return the numbered migrations shipped with this package, in order."""
    found: list[Migration] = []
    for entry in _schema_dir().iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match is None or not entry.is_file():
            continue
        version = int(match.group(1))
        if version == 0:
            continue
        found.append(Migration(version, entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise SchemaVersionError(f"two PostgreSQL migrations share a number: {versions}")
    return found


def _compat_sql() -> str:
    return (_schema_dir() / "compat" / _COMPAT_FILE).read_text(encoding="utf-8")


def _reassert_privileges(conn: psycopg.Connection[tuple[object, ...]], report: Progress) -> None:
    """Run ``privileges.sql`` in a transaction of its own, under the advisory lock."""
    report(f"re-asserting the privileges of {_PRIVILEGES_FILE}")
    with conn.transaction():
        _lock(conn)
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
        _run_sql(conn, (_schema_dir() / _PRIVILEGES_FILE).read_text(encoding="utf-8"), _PRIVILEGES_FILE)


#: Highest migration number this package knows.
SCHEMA_VERSION: Final[int] = max((m.version for m in migrations()), default=0)


def detect_flavour(conn: psycopg.Connection[tuple[object, ...]]) -> Flavour:
    """Tell a Supabase project from a plain PostgreSQL.

    Supabase has ``auth.users`` and ``storage.buckets`` and, unlike a server
    given the compat layer, a ``supabase_admin`` role or the storage service's
    ``storage.migrations`` table.
    """
    row = conn.execute(
        """
        SELECT to_regclass('auth.users') IS NOT NULL
           AND to_regclass('storage.buckets') IS NOT NULL
           AND (EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'supabase_admin')
                OR to_regclass('storage.migrations') IS NOT NULL)
        """
    ).fetchone()
    return "supabase" if row is not None and row[0] else "postgres"


def _has_version_table(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (VERSION_TABLE,)).fetchone()
    return bool(row and row[0])


def _applied_versions(conn: psycopg.Connection[tuple[object, ...]]) -> set[int]:
    if not _has_version_table(conn):
        return set()
    return {int(r[0]) for r in conn.execute("SELECT version FROM localvault.schema_version")}  # type: ignore[call-overload]


def server_schema_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Return the highest migration recorded on the server, 0 when none is."""
    if not _has_version_table(conn):
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM localvault.schema_version").fetchone()
    return int(row[0]) if row is not None else 0  # type: ignore[call-overload]


def check_schema_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Check that the server has exactly the schema this package knows.

    Returns the server's version. Raises :class:`SchemaVersionError` when the
    tables or the version record are missing, when the server is older than
    this package (run ``localvault schema apply``) or newer (upgrade
    localvault).
    """
    version = server_schema_version(conn)
    missing = [
        name
        for name in REQUIRED_TABLES
        if not (row := conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()) or not row[0]
    ]
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the server's localvault schema is version {version}, newer than this localvault knows "
            f"(version {SCHEMA_VERSION}); upgrade localvault"
        )
    if version == 0 or missing:
        what = ", ".join(missing) if missing else VERSION_TABLE
        raise SchemaVersionError(
            f"the server has no localvault schema (missing {what}); run `localvault schema apply`"
        )
    if version < SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the server's localvault schema is version {version}, older than this localvault "
            f"(version {SCHEMA_VERSION}); run `localvault schema apply`"
        )
    return version


def _lock(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))


def _run_sql(conn: psycopg.Connection[tuple[object, ...]], text: str, label: str) -> None:
    try:
        # No parameters: sent as is (simple protocol, several statements).
        conn.execute(sql.SQL(text))  # trusted package data
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg.errors.LockNotAvailable):
            raise OfflineError(f"lost the connection to PostgreSQL while applying {label}: {exc}".splitlines()[0]) \
                from exc
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SyncError(f"applying {label} failed: {reason}{_APPLY_HINTS.get(exc.sqlstate or '', '')}") from exc


_CREATED_BY_HAND = ("; it exists, but the server has no record of its version (localvault.schema_version): was the "
                    "schema created by hand? Drop it (or restore that record) and apply again")
#: What to do about the usual refusals of ``schema apply``, by SQLSTATE.
_APPLY_HINTS = {
    "42501": ("; run 'localvault schema apply' as a superuser or a role with CREATEROLE (on Supabase, the "
              "'postgres' role of the project's connection string; if that is the role used, a refusal on "
              "storage.objects means the project's supautils.policy_grants does not list it for 'postgres': "
              "see SHOW supautils.policy_grants)"),
    "55P03": ("; other transactions kept its tables busy: apply again when the server is quieter, or end the "
              "long transactions (pg_stat_activity)"),
    "42P07": _CREATED_BY_HAND,  # duplicate table
    "42710": _CREATED_BY_HAND,  # duplicate object (policy, trigger, role)
}


def _apply_migration(conn: psycopg.Connection[tuple[object, ...]], migration: Migration,
                     report: Progress) -> bool:
    """Apply one migration in its own transaction under the advisory lock; False if another applier did."""
    with conn.transaction():
        _lock(conn)
        if migration.version in _applied_versions(conn):
            return False
        newest = server_schema_version(conn)
        if newest > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the server's localvault schema is version {newest}, newer than this localvault knows "
                f"(version {SCHEMA_VERSION}); upgrade localvault"
            )
        report(f"applying migration {migration.name}")
        # Each policy statement of Supabase's `postgres` takes ACCESS EXCLUSIVE locks on auth.* and storage.*
        # (supautils' policy grants) until the commit: a migration queued behind a long transaction would hold
        # every sign-in and upload behind it. It gives up the wait instead, and is tried again.
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
        _run_sql(conn, migration.sql, migration.name)
        conn.execute("INSERT INTO localvault.schema_version (version, name) VALUES (%s, %s)",
                     (migration.version, migration.name))
    return True


def apply_schema(database_url: str, *, progress: Progress | None = None) -> SchemaReport:
    """Bring the server's schema up to :data:`SCHEMA_VERSION`.

    Connects (5 s timeout), detects Supabase or a plain PostgreSQL, applies the
    compat layer on a plain PostgreSQL when something is pending, then each
    missing migration in order, each in one transaction under an advisory lock,
    recording it in ``localvault.schema_version``, and last re-asserts the
    privileges of ``privileges.sql``. A second call applies no migration.
    ``progress``, when given, is called with a one-line message before each
    step.

    Raises :class:`InvalidInputError` for a URL that cannot work (as
    :meth:`Vault.set_remote` does), :class:`OfflineError` when the server cannot be reached,
    :class:`SchemaVersionError` when the server's schema is newer than this
    package, :class:`SyncError` when a migration fails (its transaction is
    rolled back; earlier migrations stay applied).
    """

    def report(message: str) -> None:
        if progress is not None:
            progress(message)

    wanted = migrations()
    conn = connect(check_database_url(database_url))  # (settings that cannot work are not "offline")
    try:
        with conn.transaction():
            flavour = detect_flavour(conn)
            current = server_schema_version(conn)
            done = _applied_versions(conn)
            pending = [m for m in wanted if m.version not in done]
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the server's localvault schema is version {current}, newer than this localvault knows "
                f"(version {SCHEMA_VERSION}); upgrade localvault"
            )
        applied: list[int] = []
        compat_applied = False
        if pending:
            with conn.transaction():
                _lock(conn)
                if flavour == "postgres":
                    report(f"applying the Supabase compatibility layer ({_COMPAT_FILE})")
                    _run_sql(conn, _compat_sql(), f"compat/{_COMPAT_FILE}")
                    compat_applied = True
                _run_sql(conn, _VERSION_TABLE_DDL, VERSION_TABLE)
            for migration in pending:
                for attempt in range(1, LOCK_ATTEMPTS + 1):
                    try:
                        if _apply_migration(conn, migration, report):
                            applied.append(migration.version)
                        break
                    except SyncError as exc:
                        if not isinstance(exc.__cause__, psycopg.errors.LockNotAvailable) or attempt == LOCK_ATTEMPTS:
                            raise
                        report(f"{migration.name}: its tables are busy; trying again")
                        time.sleep(attempt * LOCK_RETRY_SECONDS)
        _reassert_privileges(conn, report)
        with conn.transaction():
            version = server_schema_version(conn)
        return SchemaReport(flavour=flavour, applied=tuple(applied), version=version, compat_applied=compat_applied)
    except psycopg.OperationalError as exc:
        raise OfflineError(f"lost the connection to PostgreSQL at {describe(database_url)}") from exc
    finally:
        conn.close()
