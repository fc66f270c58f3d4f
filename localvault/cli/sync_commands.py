"""Commands of the sync: schema apply, remote set/show, sync, status."""

from __future__ import annotations

import json

import click

from ..config import redact_url
from ..errors import InvalidInputError, VaultCorruptError
from . import output
from .app import Context, json_option, main, pass_ctx
from .stopping import sigterm_as_ctrl_c


@main.group()
def schema() -> None:
    """The server's schema."""


@schema.command(name="apply")
@click.option("--database-url", required=True, envvar="LOCALVAULT_DATABASE_URL",
              help="postgresql://… of the server (or $LOCALVAULT_DATABASE_URL).")
@json_option()
def schema_apply(database_url: str, as_json: bool) -> None:
    """Create or upgrade the server's tables, RLS, buckets and policies (idempotent)."""
    from ..sync import apply_schema

    result = apply_schema(database_url, progress=None if as_json else (lambda m: output.console.print(m, highlight=False)))
    if as_json:
        output.print_json(result)
    else:
        applied = ", ".join(str(v) for v in result.applied) or "nothing (already up to date)"
        output.console.print(f"{result.flavour}: schema version {result.version}; applied {applied}")


@main.group()
def remote() -> None:
    """Where sync pushes to."""


@remote.command(name="set")
@click.option("--database-url", required=True, envvar="LOCALVAULT_DATABASE_URL",
              help="postgresql://user:password@host:port/db (or $LOCALVAULT_DATABASE_URL; the password may be left "
                   "out for libpq's $PGPASSWORD or ~/.pgpass).")
@click.option("--bucket", "bucket_url", required=True, help="fsspec URL of the user-library bucket, e.g. s3://user-library")
@click.option("--endpoint-url", help="S3 endpoint (Supabase Storage, MinIO, R2…).")
@click.option("--key", envvar="LOCALVAULT_S3_KEY", help="S3 access key id (or $LOCALVAULT_S3_KEY).")
@click.option("--secret", envvar="LOCALVAULT_S3_SECRET", help="S3 secret access key (or $LOCALVAULT_S3_SECRET).")
@click.option("--region", help="S3 region.")
@click.option("--option", "options", multiple=True, help="Extra storage option KEY=JSON_VALUE (repeatable).")
@json_option("Print the stored remote (secrets as ***) as JSON.")
@pass_ctx
def remote_set(ctx: Context, database_url: str, bucket_url: str, endpoint_url: str | None, key: str | None,
               secret: str | None, region: str | None, options: tuple[str, ...], as_json: bool) -> None:
    """Remember the remote in localvault.toml (readable only by you)."""
    storage: dict[str, object] = {}
    if key:
        storage["key"] = key
    if secret:
        storage["secret"] = secret
    client: dict[str, str] = {}
    if endpoint_url:
        client["endpoint_url"] = endpoint_url
    if region:
        client["region_name"] = region
    if client:
        storage["client_kwargs"] = client
    for item in options:
        name, _, value = item.partition("=")
        if not name or not _:
            raise InvalidInputError(f"--option {item!r} must look like KEY=VALUE")
        try:
            storage[name] = json.loads(value)
        except json.JSONDecodeError:
            storage[name] = value
    vault = ctx.vault()
    vault.set_remote(database_url, bucket_url, storage)
    if as_json and vault.config.remote is not None:
        output.print_json(vault.config.remote.redacted())
    else:
        output.console.print(f"remote set: {redact_url(bucket_url)}", highlight=False)


@remote.command(name="show")
@json_option()
@pass_ctx
def remote_show(ctx: Context, as_json: bool) -> None:
    """The remote sync pushes to, with the password and secrets shown as ***."""
    config = ctx.vault(readonly=True).config
    if config.remote is None and config.remote_problem is not None:  # (not "no remote is set": one is, broken)
        raise VaultCorruptError(config.remote_problem)
    shown = config.remote.redacted() if config.remote is not None else None
    if as_json:
        output.print_json(shown)
    elif shown is None:
        output.console.print("no remote is set; see 'localvault remote set --help'")
    else:
        output.console.print(f"database: {shown['database_url']}\nbucket: {shown['bucket_url']}", highlight=False)
        for name, value in shown["storage_options"].items():
            output.console.print(f"{name}: {json.dumps(value) if isinstance(value, dict) else value}", highlight=False)


@main.command()
@click.option("--dry-run", is_flag=True, help="Show what would be pushed; change nothing.")
@click.option("--retry-rejected", is_flag=True, help="Send again the changes the server refused before.")
@click.option("--full", is_flag=True, help="Send every row again, not only the changes (after restoring the vault "
                                           "from a backup); rows newer on the server are kept.")
@json_option()
@pass_ctx
def sync(ctx: Context, dry_run: bool, retry_rejected: bool, full: bool, as_json: bool) -> None:
    """Push the library (rows and files) to the remote; resumes after any interruption.

    Exit codes: 0 done (refused changes: see status), 3 remote settings that cannot work, 7 the server's
    schema differs (schema apply), 10 offline (nothing lost; run again later), 11 refused by the server or
    bucket (password, user, keys, bucket) or a local file missing, 12 another sync is running, 130 interrupted
    (Ctrl-C: nothing lost; run it again to go on).
    """
    from ..sync import push

    vault = ctx.vault()
    try:
        # (a service manager's or a timeout's SIGTERM ends it as Ctrl-C does: the terminal put back, and a word)
        with sigterm_as_ctrl_c(), output.progress_bars(not as_json, with_bytes=True) as progress:
            result = push(vault, dry_run=dry_run, retry_rejected=retry_rejected, full=full, progress=progress)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("interrupted: nothing was lost; what the server committed stays, and the next "
                                "'localvault sync' sends the rest") from None
    if as_json:
        output.print_json(result)
        return
    push_, delete, upload = ("would push", "would delete", "would upload") if dry_run else ("pushed", "deleted",
                                                                                           "uploaded")
    removed = f"; {_count(result.objects_deleted, 'object')} of deleted rows gone from the bucket" \
        if result.objects_deleted else ""
    output.console.print(
        f"{push_} {_count(result.rows_written, 'row')}, {delete} {result.rows_deleted}; {upload} "
        f"{_count(result.files_uploaded, 'file')} ({result.bytes_uploaded:,} bytes), {result.files_skipped} already "
        f"there{removed}; {result.conflicts} kept newer on server (edited or deleted there later); "
        f"{result.rejected} refused", highlight=False)
    if result.conflicted:
        named = ", ".join(f"{c['table'].removeprefix('user_')} {c['id']}" for c in result.conflicted[:5])
        more = f" and {result.conflicts - 5} more (--json lists them)" if result.conflicts > 5 else ""
        output.console.print(f"kept newer on server: {named}{more}; this vault keeps its own version of each",
                             highlight=False, soft_wrap=True)
    if result.remote_changed:
        output.console.print("the last sync went to another remote, or to one an older localvault did not record:"
                             f" every row {'would be' if dry_run else 'was'} sent (as --full does)", highlight=False)
    if result.rejected:
        output.warning("some changes were refused by the server or the bucket; see 'localvault status'")


@main.command()
@click.option("--offline", is_flag=True, help="Do not try to reach the remote.")
@json_option()
@pass_ctx
def status(ctx: Context, offline: bool, as_json: bool) -> None:
    """Online or offline, pending changes, refused changes, last sync, remote."""
    from ..sync import status as sync_status

    state = sync_status(ctx.vault(reads_only=True), check_online=not offline)
    if as_json:
        output.print_json(state)
        return
    output.console.print(f"remote: {state.remote or 'not set'}", highlight=False)
    if state.online:
        output.console.print("online")
    elif state.remote is None and state.problem is None:
        output.console.print("no remote is set: nothing to sync to ('localvault remote set --help')")
    elif state.remote is not None and state.problem is None:
        output.console.print(state.offline_reason or "not checked", highlight=False)
    elif state.problem == "not_ready":
        output.console.print(f"not ready to sync: {state.offline_reason}", highlight=False)
    else:
        output.console.print(f"offline: {state.offline_reason}", highlight=False)
    output.console.print(f"pending changes: {state.pending_changes}")
    output.console.print(f"last sync: {state.last_sync or 'never'}")
    if state.remote_changed:
        output.console.print("the last sync went to another remote, or to one an older localvault did not record:"
                             " the next sync sends every row (as --full)")
    for item in state.rejected:
        output.console.print(f"refused {item.table_name} {item.row_id} ({item.op}): [{item.sqlstate}] {item.message}",
                             highlight=False)
    if state.rejected:
        output.console.print("fix each as its line says, then run 'localvault sync --retry-rejected' (an entry "
                             "deleted here needs nothing more: the next sync removes it)")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
