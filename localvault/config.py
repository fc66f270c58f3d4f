"""Settings: the one place that reads the environment, and localvault.toml.

``localvault.toml`` in the vault folder holds the default user id and the sync
remote. It is written atomically and readable only by its owner (it may hold
storage keys).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from platformdirs import user_data_dir

from .errors import InvalidInputError, VaultCorruptError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAME = "localvault.toml"


def default_vault_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$LOCALVAULT_PATH`` if set, else the platform's user data folder."""
    env = os.environ if environ is None else environ
    if env.get("LOCALVAULT_PATH"):
        return Path(env["LOCALVAULT_PATH"]).expanduser()
    return Path(user_data_dir("localvault", appauthor=False)) / "vault"


@dataclass
class RemoteConfig:
    """Where ``localvault sync`` pushes to."""

    database_url: str
    bucket_url: str
    storage_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class VaultConfig:
    """Contents of localvault.toml."""

    user_id: str
    remote: RemoteConfig | None = None

    @classmethod
    def load(cls, folder: Path) -> VaultConfig:
        path = folder / CONFIG_NAME
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VaultCorruptError(f"{path} is missing; recreate it with 'localvault init {folder} --user <id>'") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise VaultCorruptError(f"{path} is not valid TOML ({exc}); fix or recreate it") from None
        if "user_id" not in data:
            raise VaultCorruptError(f"{path} has no user_id; add a line user_id = \"<uuid>\"")
        remote = data.get("remote")
        return cls(
            user_id=str(data["user_id"]),
            remote=RemoteConfig(
                database_url=str(remote["database_url"]),
                bucket_url=str(remote["bucket_url"]),
                storage_options=dict(remote.get("storage_options", {})),
            )
            if remote
            else None,
        )

    def save(self, folder: Path) -> None:
        """Write the file atomically, mode 0600."""
        from ._disk import atomic_write_bytes

        lines = ["# localvault vault settings", f"user_id = {_toml_str(self.user_id)}", ""]
        if self.remote is not None:
            lines += [
                "[remote]",
                f"database_url = {_toml_str(self.remote.database_url)}",
                f"bucket_url = {_toml_str(self.remote.bucket_url)}",
                "",
            ]
            if self.remote.storage_options:
                lines += ["[remote.storage_options]"]
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in self.remote.storage_options.items()]
                lines.append("")
        atomic_write_bytes(folder / CONFIG_NAME, "\n".join(lines).encode(), mode=0o600)


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=False)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_str(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise InvalidInputError(f"storage option value {value!r} cannot be saved; use text, numbers, booleans or tables")
