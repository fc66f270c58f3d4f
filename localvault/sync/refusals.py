"""The server's refusal of a row for good: which errors are one, and what the user is told to do about it."""

from __future__ import annotations

import psycopg

from ..errors import first_line

#: SQLSTATE classes of a refusal that a retry cannot fix.
PERMANENT_CLASSES = ("22", "23")
#: 42501 is a row-level security policy's refusal of a row. A missing GRANT shares the code but refuses every
#: row alike; :meth:`Remote.check` finds that before a sync (the server's messages, localized, cannot tell them).
PERMANENT_CODES = ("42501",)

#: What to do about the refusals people meet, by the constraint the server names (its message may be localized).
_WHAT_TO_DO = {
    "user_library_user_id_sha256_key": (
        "your account already holds this very image under another id (saved from another vault or rig); this copy "
        "is not needed there: delete it here ('localvault rm ID'; the next sync removes the object it sent)"),
    "user_collections_user_id_name_key": (
        "your account already has a collection of this name (made on another rig or on the web); rename this "
        "one ('localvault collections rename'), then 'localvault sync --retry-rejected'"),
    "user_library_collection_fkey": (
        "its collection is not on the server: refused itself (see above) or deleted there; this entry goes with "
        "the sync that sends the collection (or deletes it here), or take it out of the collection "
        "('localvault update ID --no-collection')"),
}


def is_permanent(error: psycopg.Error) -> bool:
    """Whether the server refused this row for good (it goes to sync_rejected; the rest of the batch goes on)."""
    code = error.sqlstate or ""
    return code[:2] in PERMANENT_CLASSES or code in PERMANENT_CODES


def refusal_message(error: psycopg.Error) -> str:
    """The server's message for a refused row, followed by what to do when the refusal is a common one."""
    message = first_line(error)
    what_to_do = _WHAT_TO_DO.get(getattr(error.diag, "constraint_name", None) or "")
    return f"{message} ({what_to_do})" if what_to_do else message
