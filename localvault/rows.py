"""Turning SQLite rows into models, and opaque page cursors."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from typing import Any

from pydantic_core import from_json

from .errors import InvalidInputError
from .models import SURROGATES, Collection, LibraryAsset, WorkspaceAsset, check_whole_number

WORKSPACE_COLUMNS = (
    "id, user_id, asset_type, temp_storage_path, file_size_bytes, mime_type, duration_seconds, job_id, "
    "asset_index, generation_seed, original_prompt, model_used, generation_settings, created_at, expires_at, "
    "thumbnail_path, width, height, sha256"
)
LIBRARY_COLUMNS = (
    "id, user_id, asset_type, storage_path, file_size_bytes, mime_type, duration_seconds, original_prompt, "
    "model_used, generation_seed, generation_settings, title, tags, is_favorite, visibility, collection_id, "
    "original_asset_id, thumbnail_path, width, height, sha256, created_at, updated_at"
)
COLLECTION_COLUMNS = "id, user_id, name, description, asset_count, created_at, updated_at"


_NAMES: dict[str, tuple[str, ...]] = {}


def _as_dict(row: sqlite3.Row | tuple[Any, ...], columns: str) -> dict[str, Any]:
    names = _NAMES.get(columns)
    if names is None:
        names = _NAMES[columns] = tuple(c.strip() for c in columns.split(","))
    return dict(zip(names, row, strict=True))


def workspace_asset(row: tuple[Any, ...]) -> WorkspaceAsset:
    data = _as_dict(row, WORKSPACE_COLUMNS)
    data["generation_settings"] = from_json(data["generation_settings"])
    return WorkspaceAsset(**data)


def library_asset(row: tuple[Any, ...]) -> LibraryAsset:
    data = _as_dict(row, LIBRARY_COLUMNS)
    # pydantic_core's JSON parser is ~4x faster than json.loads here (hot path of every listing).
    data["generation_settings"] = from_json(data["generation_settings"])
    data["tags"] = from_json(data["tags"])
    data["is_favorite"] = bool(data["is_favorite"])
    return LibraryAsset(**data)


def collection(row: tuple[Any, ...]) -> Collection:
    return Collection(**_as_dict(row, COLLECTION_COLUMNS))


def encode_cursor(listing: str, *parts: Any) -> str:
    """An opaque cursor for keyset pagination of ``listing`` (which listing made it: another's is refused)."""
    return base64.urlsafe_b64encode(json.dumps([listing, *parts]).encode()).decode().rstrip("=")


#: A keyset cursor's parts as listings make them: a row's ``created_at`` (the vault's timestamp text), its id.
CURSOR_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
CURSOR_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def decode_cursor(cursor: str, listing: str, kinds: tuple[type | re.Pattern[str], ...]) -> list[Any]:
    """The parts of a cursor :func:`encode_cursor` made for ``listing``, checked against ``kinds`` (a type, or
    the pattern a text part must match whole: a hand-made cursor with another date is refused, not paged by)."""
    if not isinstance(cursor, str):
        raise InvalidInputError(f"cursor must be text (a next_cursor of a previous page), not {type(cursor).__name__}")
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if (isinstance(parts, list) and len(parts) == len(kinds) + 1 and parts[0] == listing
                and all(_fits(p, k) for p, k in zip(parts[1:], kinds, strict=True))):
            return parts[1:]
    except (ValueError, TypeError, RecursionError):
        pass
    shown = cursor if len(cursor) <= 60 else cursor[:57] + "..."
    raise InvalidInputError(f"cursor {shown!r} is not a cursor of this {listing} listing; pass the next_cursor of "
                            "its previous page")


def _fits(part: Any, kind: type | re.Pattern[str]) -> bool:
    """Whether a cursor's part is a value of ``kind`` SQLite can bind: no bool for an int (JSON's true), an
    integer within 64 bits, text without lone surrogates (JSON's escapes can make them)."""
    if isinstance(kind, re.Pattern):
        return isinstance(part, str) and kind.fullmatch(part) is not None
    if kind is int:
        return isinstance(part, int) and not isinstance(part, bool) and -2**63 <= part < 2**63
    if kind is str:
        return isinstance(part, str) and not SURROGATES.search(part)
    return isinstance(part, kind)


def matches(column: str, values: tuple[str, ...]) -> str:
    """The SQL test of ``column`` against one of ``values``: ``= ?`` for one, else ``IN (?, …)``."""
    return f"{column} = ?" if len(values) == 1 else f"{column} IN ({', '.join('?' * len(values))})"


def held(conn: sqlite3.Connection, table: str, user_id: str, row_id: str) -> bool:
    """Whether ``table`` (``user_library`` or ``workspace_assets``) holds the row ``row_id`` of ``user_id``."""
    return conn.execute(f"SELECT 1 FROM {table} WHERE id = ? AND user_id = ?", (row_id, user_id)).fetchone() is not None


def check_limit(limit: int) -> int:
    return check_whole_number(limit, "page size", 1, 1000)
