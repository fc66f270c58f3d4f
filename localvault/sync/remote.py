"""The PostgreSQL target: batched upserts and deletes under the vault user's claims.

Every batch is one transaction that first sets the user's JWT claims and
``SET LOCAL ROLE authenticated``, so row-level security applies even on a
privileged connection. Rows travel as one JSON parameter per statement and are
expanded on the server (:mod:`localvault.sync.statements`): one round trip per
table and batch, no per-row statements.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from .._s3_options import check_s3_options
from ..config import RemoteConfig
from ..errors import InvalidInputError, OfflineError, SchemaVersionError, SyncError, first_line
from ..models import check_uuid
from . import connection, schema
from .answer_deadline import DeadlineConnection
from .batch import BatchResult, Changes, json_array, uuid_array
from .refusals import is_permanent, refusal_message
from .server_checks import check_grants, check_user, clock_offset
from .statements import (
    COLLECTION_UPSERT,
    DELETE_SQL,
    HOLD_DELETIONS_SQL,
    KEPT_DELETED_SQL,
    LIBRARY_PRESENT_SQL,
    LIBRARY_UPSERT,
    RELEASED_SQL,
    REVIVED_SQL,
    STAMP_DELETIONS_SQL,
)


class Remote:
    """Where a vault syncs to: a PostgreSQL database and a bucket URL (any fsspec URL)."""

    def __init__(self, database_url: str, bucket_url: str, storage_options: dict[str, Any] | None = None, *,
                 _stored: bool = False) -> None:
        """InvalidInputError for settings that cannot work (see :meth:`Vault.set_remote`)."""
        settings = RemoteConfig.checked(database_url, bucket_url, storage_options, s3_options=not _stored)
        self.database_url, self.bucket_url = settings.database_url, settings.bucket_url
        self.storage_options = settings.storage_options
        self._conn: psycopg.Connection[Any] | None = None
        #: This machine's clock minus the server's, in seconds, as :meth:`check` (with a user) last measured it.
        self.clock_offset: float | None = None

    @classmethod
    def from_stored(cls, stored: RemoteConfig) -> Remote:
        """The remote of the vault's localvault.toml. Its s3 options are not refused by name: ones stored before
        :func:`localvault._s3_options.check_s3_options` existed (which s3fs ignored) keep working, with a
        warning, for one s3fs ignores may be what sends the sync elsewhere (``endpoint`` for ``endpoint_url``:
        to AWS, offline for ever; an upgrade journey)."""
        remote = cls(stored.database_url, stored.bucket_url, stored.storage_options, _stored=True)
        if remote.bucket_url.startswith(("s3://", "s3a://")):
            try:
                check_s3_options(remote.storage_options)
            except InvalidInputError as exc:
                warnings.warn(f"the remote stored in localvault.toml (by an older localvault, which did not check "
                              f"it): {exc} with 'localvault remote set'", UserWarning, stacklevel=2)
        return remote

    # ------------------------------------------------------- connection

    def connection(self) -> psycopg.Connection[Any]:
        """The remote's own open connection; a dropped one (server restart) is detected and reopened.

        Each push step is a transaction of its own on it: a transaction a
        caller leaves open on it is rolled back by the next one (were the step
        a savepoint inside it, its role and claims would outlive it).
        """
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._conn = None
        if self._conn is None:
            self._conn = connection.connect(self.database_url, DeadlineConnection)
        return self._conn

    def _idle_connection(self) -> psycopg.Connection[Any]:
        conn = self.connection()
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        return conn

    def close(self) -> None:
        """Close the PostgreSQL connection, if open (the next call opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self, user_id: str | None = None) -> int:
        """Connect, check the server's schema version and, given ``user_id``, that the server has that user
        (and measure :attr:`clock_offset`).

        SchemaVersionError if the version differs; SyncError if the user is
        missing (every row would be refused after its file was uploaded for
        nothing). A connection dropped since its last use (a server restart)
        is reopened once, transparently; a server that cannot be reached is
        OfflineError.
        """
        if user_id is not None:
            user_id = check_uuid(user_id, "user id")
        for attempt in (1, 2):
            conn = self.connection()
            try:
                version = schema.check_schema_version(conn)
                conn.rollback()
                if user_id is not None:
                    check_user(conn, user_id)
                    check_grants(conn)
                    self.clock_offset = clock_offset(conn)
                return version
            except psycopg.OperationalError as exc:
                self.close()
                if attempt == 2:
                    raise OfflineError(f"lost the connection to PostgreSQL: {first_line(exc)}") from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------- push

    def apply(self, user_id: str, changes: Changes) -> BatchResult:
        """Write a batch in one transaction; on a permanent refusal, isolate the refused rows.

        Raises psycopg.OperationalError (connection trouble) for the caller to
        retry, and SyncError for any other error the server raises.
        """
        try:
            try:
                return self._apply(user_id, changes, isolate=False)
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError) or not is_permanent(exc):
                    raise
                if exc.sqlstate == "42501":  # RLS's refusal of a row, or a privilege revoked since the sync began:
                    check_grants(self._idle_connection())  # that refuses every row alike (SyncError, nothing moved)
            return self._apply(user_id, changes, isolate=True)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            raise SyncError(f"PostgreSQL refused the batch ({exc.sqlstate}): {first_line(exc)}") from None

    def _apply(self, user_id: str, changes: Changes, *, isolate: bool) -> BatchResult:
        """One transaction for the whole batch; with ``isolate``, each row in a savepoint of its own.

        The server checks some constraints only at commit (unique names and
        hashes: a batch may swap them). Isolating rows, they are checked after
        each row, so the one at fault is refused rather than the commit failing;
        a row refused is tried once more after all the others (a delete later in
        the batch may be what frees its name or hash).
        """
        result = BatchResult()
        with self._as_user(user_id) as conn:
            _same_schema(conn)
            if isolate:
                conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            steps: list[tuple[str, str, list[dict[str, Any]], bool]] = [
                ("user_collections", COLLECTION_UPSERT, changes.collections, False),
                ("user_library", LIBRARY_UPSERT, changes.library, False),
                ("user_library", DELETE_SQL.format(table="user_library"), changes.library_deletes, True),
                ("user_collections", DELETE_SQL.format(table="user_collections"), changes.collection_deletes, True),
            ]
            # Isolating, a refused row comes back once at the end: `work` grows while it is walked.
            work: list[tuple[str, str, list[dict[str, Any]], bool, bool]] = [
                (table, statement, rows, is_delete, False) for table, statement, rows, is_delete in steps if rows]
            for table, statement, rows, is_delete, last_try in work:
                refused: list[tuple[dict[str, Any], tuple[str, str]]] = []
                if isolate:
                    done, refused = self._one_by_one(conn, statement, rows)
                    if refused and not last_try:
                        work.append((table, statement, [row for row, _error in refused], is_delete, True))
                    elif refused:
                        passed, refused = self._together(conn, statement, refused)
                        done += passed
                        result.rejected.update(((table, row["id"]), error) for row, error in refused)
                else:
                    done = [r[0] for r in conn.execute(statement, (json_array(rows),)).fetchall()]
                if is_delete:
                    conn.execute(STAMP_DELETIONS_SQL.format(table=table),
                                 (uuid_array(str(d) for d in done), json_array(rows), user_id))
                self._count(conn, user_id, table, _without(rows, refused), done, is_delete, result)
            result.revived_collection_ids = _revived(conn, user_id, "user_collections", changes.collections)
            result.revived_library_ids = _revived(conn, user_id, "user_library", changes.library)
        return result

    @contextmanager
    def absent_held(self, user_id: str, library_ids: list[str]) -> Iterator[set[str]]:
        """The ids of ``library_ids`` the server does not hold, their deletion records held until the block ends.

        Remove the objects of those rows inside the block: a push that brings
        one of them back meanwhile waits for the block's end (server migration
        7), then finds the object gone after its commit and sends it again
        (:attr:`BatchResult.revived_library_ids`); one that brought it back
        before is seen here, and its object stays. An error in the block rolls
        back (nothing was changed on the server).
        """
        if not library_ids:
            yield set()
            return
        with self._as_user(user_id) as conn:
            # The block waits on the bucket: a server's idle timeout must not end the hold halfway.
            conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            conn.execute(HOLD_DELETIONS_SQL, (user_id, uuid_array(library_ids)))
            present = {str(r[0]) for r in conn.execute(LIBRARY_PRESENT_SQL, (user_id, uuid_array(library_ids)))}
            yield set(library_ids) - present  # read after the hold: a statement of its own, a new snapshot

    def kept_deleted(self, user_id: str, rows: list[dict[str, Any]]) -> set[str]:
        """Ids of library ``rows`` (each with its ``updated_at``) the server keeps deleted: a push skips them, so
        their files need not be sent. Read as the user (row-level security); changes nothing."""
        return self._read_as(user_id, rows, lambda conn: _kept_deleted(conn, user_id, "user_library", rows))

    def released(self, user_id: str, rows: list[dict[str, Any]]) -> set[str]:
        """Ids of library ``rows`` (each with its ``updated_at``) the server holds with that very time outside
        any collection: released by a collection's deletion there. Read as the user; changes nothing."""
        return self._read_as(user_id, rows, lambda conn: {
            str(r[0]) for r in conn.execute(RELEASED_SQL, (_times(rows),))})

    def _read_as(self, user_id: str, rows: list[dict[str, Any]],
                 read: Callable[[psycopg.Connection[Any]], set[str]]) -> set[str]:
        if not rows:
            return set()
        with self._as_user(user_id) as conn:
            return read(conn)

    @contextmanager
    def _as_user(self, user_id: str) -> Iterator[psycopg.Connection[Any]]:
        """A transaction of its own on the remote's connection, run as the vault's user (:func:`_act_as`); a
        connection found broken on the way out is closed (the next call opens a new one)."""
        conn = self._idle_connection()
        try:
            with conn.transaction():
                _act_as(conn, user_id)
                yield conn
        except psycopg.Error:
            if conn.broken:
                self.close()
            raise

    def _count(self, conn: psycopg.Connection[Any], user_id: str, table: str, rows: list[dict[str, Any]],
               done: list[Any], is_delete: bool, result: BatchResult) -> None:
        if is_delete:
            result.deleted += len(done)
            gone = {str(d) for d in done}
            kept = [r["id"] for r in rows if r["id"] not in gone]
            if kept:  # still there: edited on the server after this delete (a row never sent is simply absent)
                result.conflicted += [(table, str(r[0])) for r in conn.execute(
                    f"SELECT id FROM public.{table} WHERE id = ANY(%s::uuid[])", (uuid_array(kept),))]
            return
        result.written += len(done)
        written = {str(d) for d in done}
        skipped = [r for r in rows if r["id"] not in written]
        if not skipped:
            return
        # Kept by the server: its copy is newer, or its deletion is (not merely already there, the same).
        deleted = _kept_deleted(conn, user_id, table, skipped)
        if table == "user_library":
            result.kept_deleted_library_ids |= deleted
        newer = conn.execute(
            f"SELECT t.id FROM public.{table} AS t JOIN jsonb_to_recordset(%s::jsonb) AS s(id uuid, updated_at "
            "timestamptz) ON t.id = s.id WHERE t.updated_at > s.updated_at", (_times(skipped),))
        result.conflicted += [(table, row_id) for row_id in sorted(deleted)] + [(table, str(r[0])) for r in newer]

    @staticmethod
    def _together(conn: psycopg.Connection[Any], statement: str, refused: list[tuple[dict[str, Any], tuple[str, str]]],
                  ) -> tuple[list[Any], list[tuple[dict[str, Any], tuple[str, str]]]]:
        """Rows each refused alone, tried as a group with unique checks at the group's end: a swap of names or
        hashes passes only whole. Up to :data:`GROUP_RETRY_ROWS` rows, each left out in turn if the whole group
        fails (one unrelated refusal must not sink the swap). The ids written, and the rows still refused."""
        rows = [row for row, _error in refused]
        if not 2 <= len(rows) <= GROUP_RETRY_ROWS:
            return [], refused
        groups = [rows] + ([[r for r in rows if r is not left_out] for left_out in rows] if len(rows) > 2 else [])
        for group in groups:
            try:
                with conn.transaction():  # a savepoint: its rollback also undoes the SET CONSTRAINTS
                    conn.execute("SET CONSTRAINTS ALL DEFERRED")
                    done = [r[0] for r in conn.execute(statement, (json_array(group),)).fetchall()]
                    conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the group's checks, now
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError) or not is_permanent(exc):
                    raise
                continue
            taken = {id(row) for row in group}
            return done, [(row, error) for row, error in refused if id(row) not in taken]
        return [], refused

    @staticmethod
    def _one_by_one(conn: psycopg.Connection[Any], statement: str, rows: Iterable[dict[str, Any]],
                    ) -> tuple[list[Any], list[tuple[dict[str, Any], tuple[str, str]]]]:
        """Each row in a savepoint: the ids written, and the rows refused with (sqlstate, message)."""
        done: list[Any] = []
        refused: list[tuple[dict[str, Any], tuple[str, str]]] = []
        for row in rows:
            try:
                with conn.transaction():  # a savepoint
                    done += [r[0] for r in conn.execute(statement, (json_array([row]),)).fetchall()]
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError) or not is_permanent(exc):
                    raise
                refused.append((row, (exc.sqlstate or "", refusal_message(exc))))
        return done, refused


#: How long a statement of the sync waits for a row lock another session holds (PostgreSQL waits for ever): a web
#: app's transaction left open on one of the user's rows held a sync without a word. Long enough for another
#: rig's removal of objects, which a batch waits for on purpose (see :meth:`Remote.absent_held`).
LOCK_TIMEOUT = "60s"


def _same_schema(conn: psycopg.Connection[Any]) -> None:
    """SchemaVersionError if the server's schema changed since the sync checked it: a batch takes the schema
    appliers' lock shared, so a migration waits for the batches under way, and the batches after it see it
    (the version was checked once, as the sync began: a sync under way wrote its every batch into the schema a
    newer localvault had upgraded meanwhile; an upgrade journey)."""
    try:
        conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (schema.ADVISORY_LOCK_KEY,))
    except psycopg.errors.LockNotAvailable:  # (lock_timeout: not a row lock of a web app's, as retrying would say)
        raise SyncError(f"a `schema apply` has held the server's schema for over {LOCK_TIMEOUT}: sync again once "
                        "it is done; nothing was lost") from None
    version = schema.server_schema_version(conn)
    if version != schema.SCHEMA_VERSION:
        raise SchemaVersionError(f"the server's localvault schema changed while this sync ran (now version "
                                 f"{version}, this localvault knows {schema.SCHEMA_VERSION}): "
                                 "upgrade localvault (or run `localvault schema apply`), then sync again; nothing "
                                 "was lost")


def _act_as(conn: psycopg.Connection[Any], user_id: str) -> None:
    """Run the rest of this transaction as the vault's user under row-level security, as Supabase's API would.

    Every form auth.uid() and auth.role() read is set (the older single
    claims win over the JSON ones), so that none left on a pooled session,
    or set as a default, speaks for another user; ``localvault.push`` tells
    the server's updated_at trigger that rows come with their own time
    (server migration 6).
    """
    conn.execute("SELECT set_config('request.jwt.claims', %s, true), set_config('request.jwt.claim', %s, true),"
                 " set_config('request.jwt.claim.sub', %s, true), set_config('request.jwt.claim.role', 'authenticated',"
                 f" true), set_config('localvault.push', 'on', true), set_config('lock_timeout', '{LOCK_TIMEOUT}', true)",
                 (claims := json.dumps({"sub": user_id, "role": "authenticated"}), claims, user_id))
    conn.execute("SET LOCAL ROLE authenticated")


def _times(rows: list[dict[str, Any]]) -> str:
    return json.dumps([{"id": r["id"], "updated_at": r["updated_at"]} for r in rows])


def _revived(conn: psycopg.Connection[Any], user_id: str, table: str, rows: list[dict[str, Any]]) -> set[str]:
    if not rows:
        return set()
    return {str(r[0]) for r in conn.execute(REVIVED_SQL.format(table=table),
                                            (user_id, uuid_array(r["id"] for r in rows)))}


def _kept_deleted(conn: psycopg.Connection[Any], user_id: str, table: str, rows: list[dict[str, Any]]) -> set[str]:
    """Ids of ``rows`` not on the server and deleted there at or after their ``updated_at``."""
    return {str(r[0]) for r in conn.execute(KEPT_DELETED_SQL.format(table=table), (_times(rows), user_id))}


#: Rows refused one at a time that are tried again as a group (a swap); more are refused as they are.
GROUP_RETRY_ROWS = 8


def _without(rows: list[dict[str, Any]], refused: list[tuple[dict[str, Any], tuple[str, str]]]) -> list[dict[str, Any]]:
    gone = {id(row) for row, _error in refused}
    return [row for row in rows if id(row) not in gone]


__all__ = ["Remote", "is_permanent", "SyncError"]
