"""Connections to the sync's PostgreSQL: a short connect timeout, TCP keepalives and a send timeout (a link
cut off without a reset is declared dead, not waited on for ever), and what a refusal or an outage is told as."""

from __future__ import annotations

import os
from typing import Any, Final

import psycopg

from ..config import database_params
from ..errors import InvalidInputError, OfflineError, SyncError

#: Seconds to wait for the server to answer a connection attempt.
CONNECT_TIMEOUT: Final[int] = 5
#: A connection cut off without a reset (a partition, a dead NAT mapping, a laptop's Wi-Fi gone) would wait for
#: ever in a read: TCP keepalive probes after this many idle seconds, this often, this many unanswered...
KEEPALIVES_IDLE = 15
KEEPALIVES_INTERVAL = 5
KEEPALIVES_COUNT = 3
#: ... and at most this many milliseconds for the server to acknowledge what was sent. Either way the link is
#: declared dead (an OperationalError: retried, then offline). A DSN's own settings of these win.
TCP_USER_TIMEOUT_MS = 30_000


def describe(database_url: str) -> str:
    """Return ``host:port/dbname`` of a DSN or URL, without credentials."""
    params = database_params(database_url)
    if params is None:
        return "the PostgreSQL server"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or ""
    return f"{host}:{port}/{dbname}" if dbname else f"{host}:{port}"


#: What a server answers to a connection it refuses for good (wrong password, no such database or role,
#: no pg_hba.conf entry): waiting and retrying cannot fix these.
_REFUSALS = ("authentication failed", "no password supplied", "does not exist", "no pg_hba.conf entry",
             "permission denied for database", "server does not support ssl")


def _keepalive_settings(database_url: str) -> dict[str, Any]:
    """The keepalive and send timeout settings that neither the database URL nor its libpq service (``service``
    or ``PGSERVICE``) sets: what libpq is given directly would win over the service file's."""
    params = database_params(database_url) or {}
    given = set(params)
    service = params.get("service") or os.environ.get("PGSERVICE")
    if service:
        given |= _service_keys(str(service))
    wanted = {"keepalives": 1, "keepalives_idle": KEEPALIVES_IDLE, "keepalives_interval": KEEPALIVES_INTERVAL,
              "keepalives_count": KEEPALIVES_COUNT, "tcp_user_timeout": TCP_USER_TIMEOUT_MS}
    return {name: value for name, value in wanted.items() if name not in given}


def _service_keys(service: str) -> set[str]:
    """The settings a libpq service section names, in the files libpq reads (the user's first)."""
    import configparser

    files = [os.environ.get("PGSERVICEFILE") or os.path.expanduser("~/.pg_service.conf"),
             os.path.join(os.environ.get("PGSYSCONFDIR") or "/etc/postgresql-common", "pg_service.conf")]
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue  # libpq says what is wrong with it when it connects
        if parser.has_section(service):
            return {key.lower() for key in parser.options(service)}
    return set()


def connect(database_url: str, connection_class: type[psycopg.Connection[Any]] = psycopg.Connection
            ) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection of ``connection_class`` (5 s timeout; TCP keepalives and a send timeout: see
    :data:`KEEPALIVES_IDLE`).

    A server that cannot be reached is :class:`OfflineError`; one that
    refuses these credentials or this database is :class:`SyncError`; a
    connection string libpq cannot read is :class:`InvalidInputError` (its
    text is not repeated: it may hold the password).
    """
    try:
        # prepare_threshold=None: no server-side prepared statements. A pooler in transaction mode (Supabase's
        # Supavisor on port 6543, PgBouncer) runs each transaction on any of its server connections, where a
        # statement psycopg prepared on another one (after its 5th use) does not exist.
        return connection_class.connect(database_url, connect_timeout=CONNECT_TIMEOUT, autocommit=False,
                                        prepare_threshold=None, **_keepalive_settings(database_url))
    except psycopg.ProgrammingError:
        raise InvalidInputError("the database URL cannot be read; give postgresql://user:password@host:port/dbname "
                                "(percent-encode special characters of the password)") from None
    except psycopg.OperationalError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(exc).__name__
        where, lowered = describe(database_url), reason.lower()
        if any(refusal in lowered for refusal in _REFUSALS):
            reason = reason.split("FATAL:", 1)[-1].strip()
            raise SyncError(f"PostgreSQL at {where} refused the connection: {reason}; {_refusal_hint(lowered)}") \
                from None
        # (libpq's words, and psycopg's, which resolves names itself: offline, or a typo; both are possible)
        if "could not translate host name" in lowered or "failed to resolve host" in lowered:
            reason += "; offline, or is the host name right?"
        raise OfflineError(f"cannot connect to PostgreSQL at {where}: {reason}") from exc


def _refusal_hint(lowered: str) -> str:
    """What to check, for a server's refusal of the connection (its reason, in lower case)."""
    if "does not support ssl" in lowered:
        return "remove sslmode=require (or verify-…) from the database URL, or turn SSL on at the server"
    if "no password supplied" in lowered:
        return ("give the password in the database URL ('localvault remote set'), or in $PGPASSWORD or ~/.pgpass "
                "for libpq to find")
    return "check the user, password and database name of the database URL ('localvault remote set')"
