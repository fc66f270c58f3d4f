"""How the S3 client of a bucket is set up for many small parallel PUTs (fsspec/s3fs options)."""

from __future__ import annotations

import functools
import inspect
import socket
import threading
from typing import Any

#: Connections kept open per store (aiobotocore's default pool is 10, fewer than the engine's upload threads).
UPLOAD_CONNECTIONS = 32
#: Seconds to open a connection to the store (botocore waits 60 by default; the engine retries on its own).
CONNECT_TIMEOUT = 10
#: Attempts botocore makes of one request (the engine's own retries come on top: see retry.py).
BOTOCORE_ATTEMPTS = 2
#: Attempts s3fs makes of one call (its default is 5, each with botocore's attempts and its 15 s read timeout: a
#: store that takes connections and answers nothing held each call 2.5 minutes): the engine retries instead.
S3FS_ATTEMPTS = 1

#: Milliseconds what a connection to the store sent may go unacknowledged, or wait untransmitted before a
#: window the store keeps shut, before the system cuts the connection (Linux's TCP_USER_TIMEOUT). A part's
#: 8 MiB sent to a store that stopped reading (a stopped process, a frozen proxy: its kernel still answers the
#: window probes) waited for ever: botocore's read timeout covers the wait for an answer, not a send. A slow
#: link that keeps moving is not cut: the time counts from the last progress.
SEND_TIMEOUT_MS = 30_000

_SESSIONS: dict[Any, Any] = {}
_SESSIONS_LOCK = threading.Lock()


def _botocore_knows(option: str) -> bool:
    try:
        from botocore.config import Config
    except ImportError:  # pragma: no cover - s3fs brings botocore
        return False
    return option in getattr(Config, "OPTION_DEFAULTS", {})


def tune_s3(options: dict[str, Any]) -> None:
    """Settings for many small parallel PUTs (the caller's own options win).

    * One pooled connection per upload thread (aiobotocore's default pool is
      10, fewer than the engine's upload threads).
    * A send timeout on each connection (:data:`SEND_TIMEOUT_MS`, through aiohttp's ``socket_factory``, where
      aiobotocore and aiohttp take one).
    * A 10 s connect timeout instead of 60: an endpoint that does not answer
      is reported as offline in a minute or so (the engine retries), not five.
    * No ``Expect: 100-continue``: botocore adds it to every PUT of a file-like
      body, which costs each upload a round trip (and an event-loop turn) before
      the body is sent; our bodies are small and sent in one PUT.
    * Two attempts per request in botocore (its default is five, with up to
      15 s of backoff): the engine retries on its own, with backoff, so an
      endpoint that refuses connections (a laptop offline) is reported at once
      by ``status`` and at the start of a sync, not after botocore's retries.
      Not when the user set botocore's retries (``config_kwargs``, or
      ``AWS_MAX_ATTEMPTS``/``AWS_RETRY_MODE`` and the profile's
      ``max_attempts``/``retry_mode``, which ``retries`` would override).
    * No CRC checksum on every PUT (botocore >= 1.36 adds one by default, and
      the store checksums each body again): the ETag check (or, for parts,
      their Content-MD5) covers what it would.
    """
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("max_pool_connections", UPLOAD_CONNECTIONS)
    if _client_takes_socket_factory():  # (an older aiobotocore refuses the key: every call to the store failed)
        connector = dict(config.get("connector_args") or {})
        connector.setdefault("socket_factory", store_socket)
        config["connector_args"] = connector
    config.setdefault("connect_timeout", CONNECT_TIMEOUT)
    if _botocore_knows("request_checksum_calculation"):
        config.setdefault("request_checksum_calculation", "when_required")
        config.setdefault("response_checksum_validation", "when_required")
    options["config_kwargs"] = config
    if "session" not in options and not options.get("anon"):
        options["session"] = _shared_session(options.get("profile"))
    if "retries" not in config and not _retries_set_by_user(options.get("session")):
        config["retries"] = {"mode": "standard", "total_max_attempts": BOTOCORE_ATTEMPTS}


@functools.cache
def _client_takes_socket_factory() -> bool:
    """Whether aiobotocore takes ``socket_factory`` among its ``connector_args`` (since its end-2025 releases;
    before, AioConfig refused it as an invalid connector_arg) and aiohttp's TCPConnector does (3.12 and later).
    Without both, connections carry no send timeout, as before :data:`SEND_TIMEOUT_MS`."""
    try:
        import aiohttp
        from aiobotocore.config import AioConfig

        AioConfig(connector_args={"socket_factory": store_socket})
        return "socket_factory" in inspect.signature(aiohttp.TCPConnector).parameters
    except Exception:  # (botocore's ParamValidationError; an aiobotocore or aiohttp without these)
        return False


def store_socket(addr_info: Any) -> socket.socket:
    """A socket for a connection to the store (aiohttp's ``socket_factory``), cut by the system when what it
    sends makes no progress for :data:`SEND_TIMEOUT_MS` (where the system has ``TCP_USER_TIMEOUT``)."""
    family, kind, proto, _name, _address = addr_info
    sock = socket.socket(family=family, type=kind, proto=proto)
    if hasattr(socket, "TCP_USER_TIMEOUT") and family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, SEND_TIMEOUT_MS)
    return sock


def _retries_set_by_user(session: Any) -> bool:
    """Whether the AWS environment or profile sets botocore's retries (a profile that does not exist fails at
    the first request, where the sync names it: not here)."""
    try:
        return bool(session.get_config_variable("max_attempts") is not None
                    or session.get_config_variable("retry_mode") not in (None, "legacy"))
    except Exception:  # no session (anonymous access), or its profile cannot be read
        return False


def _shared_session(profile: str | None) -> Any:
    """One aiobotocore session per profile, reused: fsspec then reuses its S3FileSystem (and client) for equal
    options, as it would without a session. Without botocore's ``Expect: 100-continue`` (see :func:`tune_s3`)."""
    import aiobotocore.session
    from botocore.handlers import add_expect_header

    with _SESSIONS_LOCK:
        session = _SESSIONS.get(profile)
        if session is None:
            session = aiobotocore.session.AioSession(profile=profile)
            session.unregister("before-call.s3", add_expect_header)
            _SESSIONS[profile] = session
    return session
