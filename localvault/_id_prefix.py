"""An asset named by the first hex digits of its id, as a person types it after ``ls``."""

from __future__ import annotations

import re
import sqlite3

from . import models
from .errors import InvalidInputError, NotFoundError

#: Hex digits an id prefix needs (:meth:`Vault.resolve_id`): fewer would name a random asset in a big vault.
MIN_ID_PREFIX = 6
_HEX = re.compile(r"[0-9a-f]+")


def resolve(conn: sqlite3.Connection, user_id: str, text: str) -> str:
    """The whole id of ``user_id``'s one library or workspace asset whose id starts with ``text``: see
    :meth:`localvault.Vault.resolve_id`."""
    if not isinstance(text, str):
        return models.check_uuid(text, "asset id")  # (its message names the type)
    typed = text.strip().lower()
    if (whole := models.canonical_uuid(typed)) is not None:
        return whole
    digits = typed.replace("-", "")
    if len(digits) < MIN_ID_PREFIX or len(digits) > 32 or not _HEX.fullmatch(digits):
        raise InvalidInputError(f"asset id {text!r} is not a valid UUID, nor the first {MIN_ID_PREFIX} or more "
                                "hex digits of one; use an id shown by 'localvault ls'")
    # Hyphens where a canonical id has them: the prefix is then a range of the ids' index.
    prefix = "-".join(digits[a:b] for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32)) if digits[a:b])
    found = conn.execute(
        "SELECT id FROM (SELECT id FROM user_library WHERE user_id = ?1 AND id >= ?2 AND id < ?2 || 'g' LIMIT 6)"
        " UNION SELECT id FROM (SELECT id FROM workspace_assets WHERE user_id = ?1 AND id >= ?2"
        " AND id < ?2 || 'g' LIMIT 6) ORDER BY id", (user_id, prefix)).fetchall()
    if not found:
        raise NotFoundError(f"no asset id in this vault starts with {text!r} (library or workspace); list them "
                            "with 'localvault ls' or 'localvault ls workspace'")
    if len(found) > 1:
        shown = ", ".join(row[0] for row in found[:5]) + (", …" if len(found) > 5 else "")
        raise InvalidInputError(f"{text!r} starts the ids of several assets ({shown}); give more of the id")
    return str(found[0][0])
