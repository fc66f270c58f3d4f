"""Generation settings as the vault stores them: a JSON object, bounded in size and nesting, storable as
PostgreSQL's jsonb (re-exported by :mod:`localvault.models`, where the other checks of input live)."""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import InvalidInputError

MAX_SETTINGS_BYTES = 1024 * 1024
#: Nesting of generation settings (a ComfyUI graph is ~5 deep; JSON readers stop at 200 or so).
MAX_SETTINGS_DEPTH = 64
#: A NUL character in JSON text: the escape ``\u0000`` after an even number of backslashes (an odd one
#: escapes the backslash instead).
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def check_settings(value: Any) -> dict[str, Any]:
    """Generation settings: a JSON object (given as a dict or as JSON text)."""
    return _checked_settings(value)[0]


def settings_json(value: Any) -> str:
    """:func:`check_settings`, returning the settings as the JSON text that is stored."""
    return _checked_settings(value)[1]


def _checked_settings(value: Any) -> tuple[dict[str, Any], str]:
    if isinstance(value, str):
        if len(value) > MAX_SETTINGS_BYTES:
            raise InvalidInputError(f"generation settings exceed {MAX_SETTINGS_BYTES:,} bytes of JSON")
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"generation settings are not valid JSON ({exc.msg}); give a JSON object") from None
        except (ValueError, RecursionError) as exc:  # an integer of 4,300+ digits; nesting Python cannot follow
            raise InvalidInputError(f"generation settings cannot be read as JSON ({exc}); "
                                    "give a simpler object") from None
    if not isinstance(value, dict):
        raise InvalidInputError(
            f"generation settings must be a JSON object, not {type(value).__name__}; wrap values as {{\"key\": value}}"
        )
    if _nesting(value) > MAX_SETTINGS_DEPTH:
        raise InvalidInputError(f"generation settings are nested more than {MAX_SETTINGS_DEPTH} levels deep; "
                                "flatten them")
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
        size = len(encoded.encode())
    except UnicodeEncodeError:
        raise InvalidInputError("generation settings hold text that is not valid Unicode; give it as UTF-8") from None
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"generation settings cannot be stored as JSON: {exc}") from None
    if size > MAX_SETTINGS_BYTES:
        raise InvalidInputError(f"generation settings exceed {MAX_SETTINGS_BYTES:,} bytes of JSON")
    if _JSON_NUL.search(encoded):
        raise InvalidInputError("generation settings hold a NUL character (\\u0000), which PostgreSQL's jsonb cannot "
                                "store; remove it")
    return value, encoded


def _nesting(value: Any) -> int:
    """How deep dicts and lists nest in ``value``, level by level (no recursion; stops past the limit)."""
    level, depth = ([value] if isinstance(value, (dict, list, tuple)) else []), 0
    while level:
        depth += 1
        if depth > MAX_SETTINGS_DEPTH:
            break
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, (dict, list, tuple))]  # only containers: a big graph has many leaves
    return depth
