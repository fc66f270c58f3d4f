"""The ``localvault`` command: a thin layer that parses, calls the library and renders."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import click

from ..config import default_vault_path
from ..errors import LocalVaultError
from ..vault import Vault
from . import output


class VaultGroup(click.Group):
    """Turns every LocalVaultError into one clear line and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return super().invoke(ctx)
            except LocalVaultError as exc:
                output.error(str(exc))
                ctx.exit(exc.exit_code)
            except OSError as exc:  # a file the user named could not be read or written
                output.error(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
                ctx.exit(8)
            except KeyboardInterrupt:
                output.error("interrupted")
                ctx.exit(130)
            finally:
                for item in caught:
                    output.warning(str(item.message))


class Context:
    """What every command gets: where the vault is, and how to open it."""

    def __init__(self, vault_path: Path, user_id: str | None) -> None:
        self.vault_path = vault_path
        self.user_id = user_id
        self._vault: Vault | None = None

    def vault(self, readonly: bool = False) -> Vault:
        if self._vault is None:
            self._vault = Vault.open(self.vault_path, user_id=self.user_id, readonly=readonly)
        return self._vault

    def close(self) -> None:
        if self._vault is not None:
            self._vault.close()


pass_ctx = click.make_pass_decorator(Context)


@click.group(cls=VaultGroup)
@click.option("--vault", "vault_path", type=click.Path(path_type=Path), envvar="LOCALVAULT_PATH",
              help="Vault folder (default: $LOCALVAULT_PATH or the platform's user data folder).")
@click.option("--user", "user_id", help="Act as this user of a shared vault (default: the vault's user).")
@click.version_option(package_name="localvault")
@click.pass_context
def main(ctx: click.Context, vault_path: Path | None, user_id: str | None) -> None:
    """localvault: keep AI-generated images and videos in a local vault, and sync them."""
    output.show_library_logs()
    state = Context(vault_path or default_vault_path(), user_id)
    ctx.obj = state
    ctx.call_on_close(state.close)


# Commands register themselves on `main`.
from . import (  # noqa: E402 - the command modules import `main` from here
    intake_commands,  # noqa: F401
    sync_commands,  # noqa: F401
    vault_commands,  # noqa: F401
)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
