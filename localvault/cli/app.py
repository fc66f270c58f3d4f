"""The ``localvault`` command's group, its options and error handling: a thin layer that parses, calls the library
and renders (the commands are in the ``*_commands`` modules)."""

from __future__ import annotations

import sqlite3
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from .._disk import on_read_only_filesystem
from .._sqlite_errors import corruption_error
from ..config import default_vault_path
from ..db import DB_NAME
from ..errors import LocalVaultError
from ..vault import Vault
from . import output

F = TypeVar("F", bound=Callable[..., Any])


class VaultGroup(click.Group):
    """Turns every LocalVaultError into one clear line and its exit code, never a traceback.

    With ``--json``, every failure is also a JSON object on stdout: an error
    of the library, a usage error, or (with its traceback on stderr) a bug.
    """

    json_in_args = False

    def main(self, args: Sequence[str] | None = None, *rest: Any, **options: Any) -> Any:
        # Read from the raw arguments: a usage error comes before any option is parsed.
        self.json_in_args = "--json" in (sys.argv[1:] if args is None else list(args))
        output.tolerate_undecodable_names()
        return super().main(args, *rest, **options)

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            # Shown as they come, not kept for the end: a watch runs for days.
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except LocalVaultError as exc:
                self._fail(ctx, str(exc), exc.exit_code, type(exc).__name__)
            except BrokenPipeError:  # stdout closed (`| head`): click's main ends quietly, exit 1
                raise
            except OSError as exc:  # a file the user named could not be read or written
                self._fail(ctx, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 8, "OSError")
            except KeyboardInterrupt as exc:
                self._fail(ctx, str(exc) or "interrupted", 130, "Interrupted")
            except (click.exceptions.Exit, click.exceptions.Abort):
                raise
            except click.ClickException as exc:  # click prints it (usage and all) on stderr
                self._json_error(exc.format_message(), exc.exit_code, type(exc).__name__)
                raise
            except sqlite3.DatabaseError as exc:  # a damaged database, met outside Vault and its parts (status, watch)
                where = ctx.obj.vault_path / DB_NAME if isinstance(ctx.obj, Context) else Path(DB_NAME)
                if (damaged := corruption_error(exc, where)) is None:
                    self._json_error(f"{type(exc).__name__}: {exc}", 1, "InternalError")
                    raise
                self._fail(ctx, str(damaged), damaged.exit_code, type(damaged).__name__)
            except Exception as exc:  # a bug: its traceback follows on stderr, for a report
                self._json_error(f"{type(exc).__name__}: {exc}", 1, "InternalError")
                raise

    def _fail(self, ctx: click.Context, message: str, exit_code: int, kind: str) -> None:
        """One ``error:`` line on stderr (and, under ``--json``, the error as JSON on stdout), then exit."""
        output.error(message)
        self._json_error(message, exit_code, kind)
        ctx.exit(exit_code)

    def _json_error(self, message: str, exit_code: int, kind: str) -> None:
        if self.json_in_args:
            # On one line: valid JSON for any command, and a JSON Lines record under 'watch --json'.
            try:
                output.print_json({"error": {"message": message, "exit_code": exit_code, "kind": kind}}, line=True)
            except (OSError, ValueError):  # stdout is what failed (full, closed): the error line on stderr says it
                pass


class Context:
    """What every command gets: where the vault is, and how to open it."""

    def __init__(self, vault_path: Path, user_id: str | None) -> None:
        self.vault_path = vault_path
        self.user_id = user_id
        self._vault: Vault | None = None

    def vault(self, readonly: bool = False, auto_cleanup: bool = True, *, reads_only: bool = False) -> Vault:
        """The vault, opened once. ``reads_only``: the command only reads, so a vault on a read-only
        filesystem (a backup disk) is opened read-only rather than refused."""
        if self._vault is None:
            if reads_only and not readonly and on_read_only_filesystem(self.vault_path):
                readonly = True
            self._vault = Vault.open(self.vault_path, user_id=self.user_id, readonly=readonly,
                                     auto_cleanup=auto_cleanup)
        return self._vault

    def close(self) -> None:
        if self._vault is not None:
            self._vault.close()


pass_ctx = click.make_pass_decorator(Context)


def json_option(help: str = "Print JSON.") -> Callable[[F], F]:
    """``--json``: the command prints JSON on stdout, and so does a failure (``{"error": {…}}``, see VaultGroup)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    output.warning(str(message))


@click.group(cls=VaultGroup)
@click.option("--vault", "vault_path", type=click.Path(), envvar="LOCALVAULT_PATH",
              help="Vault folder (default: $LOCALVAULT_PATH or the platform's user data folder).")
@click.option("--user", "user_id", help="Act as this user of a shared vault (default: the vault's user).")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=lambda ctx, _param, asked:
              _version(ctx, asked), help="Show the version, and the vault and server schemas it knows, and exit.")
@click.pass_context
def main(ctx: click.Context, vault_path: str | None, user_id: str | None) -> None:
    """localvault: keep AI-generated images and videos in a local vault, and sync them."""
    output.show_library_logs()
    if vault_path == "":  # ('--vault "$UNSET"' would otherwise act on a vault in the current folder)
        raise click.BadParameter("is empty; give the vault's folder", param_hint="'--vault'")
    state = Context(Path(vault_path) if vault_path is not None else default_vault_path(), user_id)
    ctx.obj = state
    ctx.call_on_close(state.close)


def _version(ctx: click.Context, asked: bool) -> None:
    """``--version``: the package's, and the schema versions it knows (what an upgrade is about: the release
    number alone does not change with them)."""
    if not asked or ctx.resilient_parsing:
        return
    from .. import __version__
    from .._sqlite_migrations import schema_version

    try:
        from ..sync.schema import SCHEMA_VERSION
        server = f"server schema {SCHEMA_VERSION}"
    except ImportError:  # (without the sync extra)
        server = "no sync (pip install -e '.[sync]')"
    click.echo(f"localvault, version {__version__} (vault schema {schema_version()}; {server})")
    ctx.exit()


# Commands register themselves on `main`.
from . import (  # noqa: E402 - the command modules import `main` from here (.app)
    intake_commands,  # noqa: F401
    sync_commands,  # noqa: F401
    vault_commands,  # noqa: F401
)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
