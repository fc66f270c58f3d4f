"""``localvault status``: is the remote reachable, what waits, what was refused, when we last synced."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .._sqlite_errors import function_raising_vault_errors
from ..config import redact_database_url, redact_url, remote_identity
from ..errors import InvalidInputError, LocalVaultError, OfflineError, VaultCorruptError
from ..models import check_flag
from .bucket import Bucket
from .engine import remote_for
from .outbox import pending_count, remote_changed
from .remote import Remote

if TYPE_CHECKING:
    from ..vault import Vault


@dataclass
class RejectedChange:
    """A change the server or bucket refused for good (``sync_rejected``): sent again by ``retry_rejected``."""

    table_name: str
    row_id: str
    op: str
    sqlstate: str
    message: str
    rejected_at: str


@dataclass
class SyncStatus:
    """``localvault status``: online or not, what waits, what was refused, when we last synced."""

    online: bool
    offline_reason: str | None
    pending_changes: int
    rejected: list[RejectedChange] = field(default_factory=list)
    last_sync: str | None = None
    remote: str | None = None
    #: Why not online: the server or bucket cannot be reached (``offline``), or it answers but a sync
    #: cannot run until something is fixed (``not_ready``: credentials, settings, bucket, server schema).
    problem: Literal["offline", "not_ready"] | None = None
    #: This machine's clock minus the server's, in seconds (positive: ahead), when the server was reached;
    #: see :func:`localvault.sync.report.clock_warning`.
    clock_offset_seconds: float | None = None
    #: The last sync went to another database or bucket: the next one sends every row (``pending_changes``
    #: counts them all; ``last_sync`` is of that other remote).
    remote_changed: bool = False


@function_raising_vault_errors("db")
def status(vault: Vault, remote: Remote | None = None, *, check_online: bool = True) -> SyncStatus:
    """Whether the remote answers, how many changes wait, which were refused, and the last sync."""
    check_online = check_flag(check_online, "check_online")
    if remote is not None:
        remote_for(vault, remote)  # (a Remote, not its URL: InvalidInputError)
    rejected = [
        RejectedChange(*row)
        for row in vault.db.conn.execute(
            "SELECT table_name, row_id, op, sqlstate, message, rejected_at FROM sync_rejected WHERE user_id = ? ORDER BY seq",
            (vault.user_id,),
        )
    ]
    online = False
    reason: str | None = "no remote is set"
    problem: Literal["offline", "not_ready"] | None = None
    offset: float | None = None
    try:
        configured = remote or (remote_for(vault, None) if vault.config.remote or vault.config.remote_problem
                                else None)
    except (InvalidInputError, VaultCorruptError) as exc:  # settings stored before they were checked, or broken
        configured, reason, problem = None, str(exc), "not_ready"
    if configured is not None and not check_online:
        reason = "not checked (--offline)"
    elif configured is not None:
        try:
            configured.check(vault.user_id)
            offset = configured.clock_offset
            Bucket(configured.bucket_url, configured.storage_options).check_reachable(create=False)
            online, reason = True, None
        except OfflineError as exc:
            online, reason, problem = False, str(exc), "offline"
        except LocalVaultError as exc:  # it answered: a refusal, a wrong schema version, unusable settings
            online, reason, problem = False, str(exc), "not_ready"
        finally:
            if remote is None:  # a Remote the caller passed stays theirs to close
                configured.close()
    shown = configured or vault.config.remote
    moved = shown is not None and remote_changed(vault, remote_identity(shown))
    return SyncStatus(
        online=online, offline_reason=reason, problem=problem, rejected=rejected, remote_changed=moved,
        pending_changes=pending_count(vault, with_everything=moved),
        last_sync=vault.db.get_meta(f"last_sync:{vault.user_id}"),
        remote=f"{redact_database_url(shown.database_url)} + {redact_url(shown.bucket_url)}" if shown else None,
        clock_offset_seconds=offset,
    )

