"""A sidecar that comes after the watcher took its file: its prompt, seed and model fill the row's placeholders.

Used by :mod:`localvault.watch`. The row is changed only while it still holds
what a file without metadata was given (placeholders, or the watch's
``--prompt``/``--model``, and the name of its file, ``source_file``): a
sidecar never overwrites metadata. The row keeps its ``source_file``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import metadata
from ._examine import row_values
from ._source_file import RowValues, name_in, renamed
from .errors import LocalVaultError
from .metadata.sidecar import SIDECAR
from .models import GenerationInfo

if TYPE_CHECKING:
    from .db import Database
    from .vault import Vault

#: Seconds between a file and its sidecar for an import of the file again to fill its asset from the sidecar.
FILL_WINDOW_SECONDS = 60.0
#: Rows a late sidecar filled, remembered (with what it wrote) for a second reading of a sidecar still written.
LATE_FILLS_KEPT = 1000

log = logging.getLogger("localvault.watch.notices")

_FILL = ("UPDATE workspace_assets SET generation_seed = ?, original_prompt = ?, model_used = ?, generation_settings = ?"
         " WHERE id = ? AND user_id = ? AND generation_seed = ? AND original_prompt = ? AND model_used = ?"
         " AND generation_settings IS ?")


def fill_from_sidecar(vault: Vault, path: str, asset_id: str, prompt: str | None, model: str | None,
                      expected: RowValues | None = None) -> RowValues | None:
    """Fill the row of ``asset_id`` (taken from ``path``) from the sidecar now beside ``path``, if the row still
    holds ``expected`` (by default the values of a file without metadata: a sidecar read while it was still
    being written is read again at its close, over what that first reading wrote), keeping the row's
    ``source_file``. What it wrote, or None. Never raises: the watch goes on."""
    try:
        # The sidecar alone: the import found nothing embedded (and the vault's copy may be on another filesystem).
        info = metadata.read(path, data=b"")
        if info.source == "none":
            return None
        # Read outside the write lock: the fill's own WHERE checks the row still holds what is read here.
        row = vault.db.conn.execute("SELECT generation_settings FROM workspace_assets WHERE id = ? AND user_id = ?",
                                    (asset_id, vault.user_id)).fetchone()
        if row is None:  # deleted meanwhile
            return None
        name = name_in(row[0])  # (what its import named it: kept)
        filled = row_values(info, prompt, model, name)
        if expected is None:
            expected = row_values(GenerationInfo(), prompt, model, name)
        if filled == expected:  # (read again, unchanged)
            return filled
        with vault.db.write() as conn:
            changed = conn.execute(_FILL, (*filled, asset_id, vault.user_id, *expected)).rowcount
    except (LocalVaultError, sqlite3.Error, OSError) as exc:
        log.warning("the sidecar of %s came after it was taken, and could not be read into its asset: %s", path, exc)
        return None
    if not changed:  # deleted meanwhile, or its row holds other values
        return None
    log.info("read the sidecar of %s into asset %s, which it reached after the file was taken", path, asset_id)
    return filled


class LateFills:
    """The watch's late sidecars: read into their rows, and what each wrote, the newest :data:`LATE_FILLS_KEPT`
    kept for a second reading of a sidecar that was still being written."""

    def __init__(self) -> None:
        self._filled: dict[str, RowValues | None] = {}

    def read(self, vault: Vault, late: Iterable[tuple[str, str]], prompt: str | None,
             model: str | None) -> list[tuple[str, str]]:
        """Read each ``(path, asset_id)`` sidecar into its row; those that changed it."""
        changed = []
        for path, asset_id in late:
            before = None  # the placeholders of a file taken without metadata
            if asset_id in self._filled:  # its sidecar was read before (by its import, perhaps half-written)
                before = self._filled.pop(asset_id) or row_values_now(vault, asset_id)
                if before is None:  # deleted meanwhile
                    continue
            written = fill_from_sidecar(vault, path, asset_id, prompt, model, before)
            if written is not None:
                self.remember(asset_id, written)  # (a second reading, at its close, may still improve it)
                if written != before:
                    changed.append((path, asset_id))
        return changed

    def remember(self, asset_id: str, values: RowValues | None) -> None:
        """What a sidecar filled into the row of ``asset_id`` (None: the row's values then)."""
        self._filled[asset_id] = values
        while len(self._filled) > LATE_FILLS_KEPT:
            del self._filled[next(iter(self._filled))]


def fill_duplicates(db: Database, user_id: str, found: dict[str, tuple[str, RowValues]],
                    placeholders: RowValues) -> dict[str, str]:
    """Fill from a sidecar the workspace rows that still hold ``placeholders`` (their file was taken without
    metadata) when a later import of the same bytes found that sidecar beside them: one that came while no
    watch ran, which the watch's own late reading (in memory) could not see. ``found``: the duplicate's path
    -> (sha256, the row values its reading gave). ``placeholders`` are compared, and the values written, with the
    row's own ``source_file`` (the duplicate's name is another). The paths filled -> their asset id."""
    filled: dict[str, str] = {}
    if not found:
        return filled
    try:
        with db.write() as conn:
            for path, (sha256, values) in found.items():
                row = conn.execute("SELECT id, generation_settings FROM workspace_assets WHERE user_id = ? AND"
                                   " sha256 = ? AND generation_seed = ? AND original_prompt = ? AND model_used = ?",
                                   (user_id, sha256, *placeholders[:3])).fetchone()  # (only a row without metadata)
                if row is None:
                    continue
                name = name_in(row[1])
                expected, wanted = renamed(placeholders, name), renamed(values, name)
                if wanted != expected and conn.execute(_FILL, (*wanted, row[0], user_id, *expected)).rowcount:
                    filled[path] = row[0]
    except (LocalVaultError, sqlite3.Error, OSError) as exc:  # the import's own work is done: it stands
        log.warning("the sidecars of %d file(s) taken before without metadata could not be read into their "
                    "assets: %s", len(found), exc)
        return {}
    for path, asset_id in filled.items():
        log.info("read the sidecar of %s into asset %s, which it reached after the file was taken", path, asset_id)
    return filled


def came_with_its_file(path: str, mtime: float, info: GenerationInfo) -> bool:
    """Whether ``info`` (a duplicate's reading) came from a sidecar written with its file, within
    :data:`FILL_WINDOW_SECONDS` of the file's ``mtime``: one a rig wrote while no watch ran. A caption that a
    tagger wrote beside the image later (kohya's or WD14's ``NAME.txt``) is no generation's metadata."""
    name = info.settings.get(SIDECAR)
    if not isinstance(name, str):
        return False
    try:
        written = os.stat(os.path.join(os.path.dirname(path), name)).st_mtime
    except OSError:
        return False
    return abs(written - mtime) <= FILL_WINDOW_SECONDS


def row_values_now(vault: Vault, asset_id: str) -> RowValues | None:
    """What the row of ``asset_id`` holds now (None: deleted, or unreadable: the watch goes on without it): the
    values its import read from a sidecar."""
    try:
        row = vault.db.conn.execute("SELECT generation_seed, original_prompt, model_used, generation_settings FROM"
                                    " workspace_assets WHERE id = ? AND user_id = ?", (asset_id, vault.user_id)).fetchone()
    except (LocalVaultError, sqlite3.Error) as exc:
        log.warning("cannot read asset %s back to note what its sidecar gave: %s", asset_id, exc)
        return None
    return None if row is None else (row[0], row[1], row[2], row[3])


__all__ = ["SIDECAR", "LateFills", "RowValues", "came_with_its_file", "fill_duplicates", "fill_from_sidecar", "row_values_now"]
