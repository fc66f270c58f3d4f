"""Connection trouble with PostgreSQL or the bucket: retried with backoff, then reported as offline."""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

from ..errors import OfflineError, SyncError, first_line
from .answer_deadline import NoAnswerError
from .store_errors import SETTINGS_HINT, http_answer_errors, network_errors, settings_errors, store_refusal

RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
#: No new attempt starts this long after the first failure: a store or server that takes connections and then
#: answers nothing costs each attempt its read timeout (30 s for S3: two attempts of 15), and is offline after
#: about a minute and a half, not after six timeouts.
RETRY_BUDGET_SECONDS = 45.0
#: A retry is a warning (the CLI prints it above its progress bar) once per reason in this many seconds; the
#: others alike (sixteen uploads cut by one dropped link) are logged at INFO.
WARN_EVERY_SECONDS = 10.0
T = TypeVar("T")

log = logging.getLogger(__name__)
_warned: dict[str, float] = {}
#: What a reason names that differs from one file to the next: quoted text, URLs, paths.
_NAMED = re.compile(r""""[^"]*"|'[^']*'|\S+://\S*|\S*/\S*""")
_warned_lock = threading.Lock()

#: Connection trouble: retried with backoff, then reported as offline (with the store's own, see network_errors).
#: A session the server ended for idling in a transaction (25P03) is one too.
_RETRYABLE: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.errors.IdleInTransactionSessionTimeout,
                                               OfflineError, OSError)


class RetryStopped(SyncError):
    """A retry's wait was cut short by its ``stop`` event: the sync the work was for has stopped."""


class RetriesExhausted(OfflineError):
    """:func:`retrying` gave up: a ``retrying`` around it (a file's upload around its parts') gives up too, rather
    than start its own attempts at what was just tried for as long as the budget allows."""


def stalled(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection the system cut because what it sent made no progress (``ETIMEDOUT``: the
    send timeout of :mod:`.s3_client`, or TCP's own retransmissions): a store that stopped reading."""
    seen: BaseException | None = exc
    for _ in range(16):  # (a chain of causes is short; a cycle is not followed for ever)
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno == errno.ETIMEDOUT:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def reason(exc: BaseException) -> str:
    """What went wrong, in one line: the error's first line, or what a stall means (botocore words it as a
    connection that could not be made)."""
    if stalled(exc):
        return "the store stopped taking data (what was sent went unacknowledged; the connection was cut)"
    return first_line(exc)


def retrying(action: Callable[[], T], what: str, on_retry: Callable[[], None] | None = None,
             stop: threading.Event | None = None) -> T:
    """Run ``action``, retrying connection trouble with backoff; OfflineError when it persists.

    Up to six attempts, none started :data:`RETRY_BUDGET_SECONDS` after the
    first failure (or after the last attempt that ran longer than that). ``stop``, once set, ends the waits between attempts with
    :class:`RetryStopped`.
    """
    stop = stop or threading.Event()
    deadline: float | None = None
    for attempt, delay in enumerate((*RETRY_DELAYS, None), start=1):
        started = time.monotonic()
        try:
            return action()
        except RetriesExhausted:
            raise
        except Exception as exc:
            if not is_connection_trouble(exc):
                given_up = _not_retried(exc, what)
                if given_up is exc:
                    raise
                raise given_up from None
            now = time.monotonic()
            if deadline is None or (now - started > RETRY_BUDGET_SECONDS  # (an attempt that long got somewhere: a
                                    and not isinstance(exc, NoAnswerError)  # big file's upload; not a wait for an
                                    and not stalled(exc)):  # answer that never came, nor a send that stalled)
                deadline = now + RETRY_BUDGET_SECONDS
            if delay is not None and now + delay > deadline:
                delay = None  # (the attempts waited out their timeouts: a link that answers nothing)
            if delay is None and isinstance(exc, psycopg.errors.LockNotAvailable):  # 55P03: lock_timeout, each time
                raise SyncError(f"{what}: another session kept a lock on rows this sync writes ({first_line(exc)}; a "
                                "web app's or an admin's transaction left open?); end it, then sync again") from None
            if delay is None and isinstance(exc, psycopg.Error) and (exc.sqlstate or "").startswith("40"):
                # 40001, 40P01 (class 40, transaction rollback): the server answered; it is not offline
                raise SyncError(f"{what}: other writers kept colliding with this sync ({first_line(exc)}); "
                                "sync again in a moment") from None
            if delay is None:
                raise RetriesExhausted(f"{what} failed after {attempt} attempt{'s' if attempt > 1 else ''}: "
                                       f"{reason(exc)}") from None
            _tell_retry(what, exc, attempt, delay)
            if on_retry:
                on_retry()
            if stop.wait(delay):
                raise RetryStopped(f"{what}: the sync stopped") from None
    raise AssertionError("unreachable")


def _retryable_kinds() -> tuple[type[BaseException], ...]:
    """The errors retried unless they say otherwise: ours, and the stores' (imported when first asked)."""
    return (*_RETRYABLE, *network_errors(), *http_answer_errors())


def is_connection_trouble(exc: BaseException) -> bool:
    """Whether :func:`retrying` would try ``exc``'s action again (a lost connection, a busy store), rather than
    give up at once (a refusal, a file or bucket gone, settings no retry fixes)."""
    return (isinstance(exc, _retryable_kinds())
            and not isinstance(exc, (PermissionError, FileNotFoundError, *settings_errors()))
            and store_refusal(exc) is None)


def _not_retried(exc: Exception, what: str) -> Exception:
    """What :func:`retrying` raises for an error it does not retry: ``exc`` itself, or a SyncError that says what
    to do."""
    if isinstance(exc, settings_errors()):  # credentials or AWS settings: no retry helps
        return SyncError(f"{what}: {first_line(exc)}; {SETTINGS_HINT}")
    if not isinstance(exc, _retryable_kinds()) or isinstance(exc, FileNotFoundError):
        return exc
    if isinstance(exc, PermissionError):
        if exc.filename and os.path.exists(exc.filename):  # a local file we may not read
            return SyncError(f"{what}: cannot read {exc.filename} ({exc.strerror}); check its permissions")
        return SyncError(f"{what}: access denied ({first_line(exc)}); check the keys and the bucket's policies")
    return SyncError(f"{what}: the bucket refused ({store_refusal(exc)}); retrying will not help: fix what it names "
                     "(the bucket's limits, such as the largest file it takes, or its settings; a full or read-only "
                     "disk), or delete the asset, then sync again")


def _tell_retry(what: str, exc: BaseException, attempt: int, delay: float) -> None:
    """Log a retry: a sync that waits on a failing link says why (the progress bar stands still meanwhile)."""
    why, now = reason(exc), time.monotonic()
    kind = f"{type(exc).__name__}: {_NAMED.sub('…', why)}"  # one upload's reason is the next one's
    with _warned_lock:
        loud = now - _warned.get(kind, -math.inf) >= WARN_EVERY_SECONDS
        if loud:
            if len(_warned) > 256:  # (bounded, whatever the reasons name)
                _warned.clear()
            _warned[kind] = now
    log.log(logging.WARNING if loud else logging.INFO, "%s: %s; trying again in %g s (attempt %d of %d)",
            what, why, delay, attempt + 1, len(RETRY_DELAYS) + 1)
