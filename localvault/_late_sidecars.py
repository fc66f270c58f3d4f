"""A sidecar that comes after the watcher took its file: its prompt, seed and model fill the row's placeholders.

Used by :mod:`localvault.watch`. The row is changed only while it still holds
what a file without metadata was given (placeholders, or the watch's
``--prompt``/``--model``): a sidecar never overwrites metadata.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import metadata
from ._examine import row_values
from .errors import LocalVaultError, NotFoundError
from .models import GenerationInfo

if TYPE_CHECKING:
    from .vault import Vault

log = logging.getLogger("localvault.watch.notices")

_FILL = ("UPDATE workspace_assets SET generation_seed = ?, original_prompt = ?, model_used = ?, generation_settings = ?"
         " WHERE id = ? AND user_id = ? AND generation_seed = ? AND original_prompt = ? AND model_used = ?"
         " AND generation_settings IS ?")


def fill_from_sidecar(vault: Vault, path: str, asset_id: str, prompt: str | None, model: str | None) -> bool:
    """Fill the placeholders of ``asset_id`` (taken from ``path``) from the sidecar now beside ``path``;
    whether the row changed. Never raises: the watch goes on."""
    try:
        asset = vault.workspace.get(asset_id)
        # Embedded metadata from the vault's copy (the source may be gone: --move), the sidecar beside the source.
        info = metadata.read(path, contents=vault.workspace.file_path(asset))
        if info.source == "none":
            return False
        bare = row_values(GenerationInfo(), prompt, model)
        filled = row_values(info, prompt, model)
        with vault.db.write() as conn:
            changed = conn.execute(_FILL, (*filled, asset_id, vault.user_id, *bare)).rowcount
    except NotFoundError:  # deleted meanwhile
        return False
    except (LocalVaultError, OSError) as exc:
        log.warning("the sidecar of %s came after it was taken, and could not be read into its asset: %s", path, exc)
        return False
    if changed:
        log.info("read the sidecar of %s into asset %s, which it reached after the file was taken", path, asset_id)
    return changed == 1


__all__ = ["fill_from_sidecar"]
