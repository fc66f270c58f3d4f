"""One name, two spellings: the composed (NFC) and decomposed (NFD) forms of collection names and tags.

"é" may be typed as one character (Linux) or as "e" and an accent (macOS keyboards and file names). Names
and tags are stored composed (:func:`composed`); a vault written before that may hold the other spelling,
which lookups still find (:func:`spellings`, :func:`tag_spellings_held`).
"""

from __future__ import annotations

import sqlite3
import unicodedata


def composed(text: str) -> str:
    """``text`` in Unicode's composed form (NFC)."""
    return unicodedata.normalize("NFC", text)


def spellings(name: str) -> tuple[str, ...]:
    """A composed name or tag, then its decomposed form where that differs."""
    decomposed = unicodedata.normalize("NFD", name)
    return (name,) if decomposed == name else (name, decomposed)


def tag_spellings_held(conn: sqlite3.Connection, user_id: str, tag: str) -> tuple[str, ...]:
    """The spellings of a composed tag that this user's library holds; the composed one at least. (A filter of
    two spellings sorts the tag's rows rather than reading them in index order: only older vaults pay for it.)"""
    first, *others = spellings(tag)
    return (first, *(other for other in others if conn.execute(
        "SELECT 1 FROM library_tags WHERE user_id = ? AND tag = ?", (user_id, other)).fetchone()))


#: Rows of a tag counted, at most, to choose which tag of a filter drives it (the rarest one).
_COUNTED_AT_MOST = 100_000


def tags_rarest_first(conn: sqlite3.Connection, user_id: str, tags: list[str], *,
                      count: bool) -> list[tuple[int, tuple[str, ...]]]:
    """Each composed tag's held spellings (:func:`tag_spellings_held`) with, if ``count``, its rows in this
    user's library (up to 100,000), the rarest first: a filter of several tags reads the rarest one's rows, and
    one of a tag no row has reads none (it walked a common word's or tag's every row, 1.5 s over a million)."""
    if not count:
        return [(_COUNTED_AT_MOST, tag_spellings_held(conn, user_id, tag)) for tag in tags]
    counted = []
    for tag in tags:
        forms = tag_spellings_held(conn, user_id, tag)
        marks = ", ".join("?" * len(forms))
        count = conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM library_tags WHERE user_id = ? AND tag IN ({marks})"
                             " LIMIT ?)", (user_id, *forms, _COUNTED_AT_MOST)).fetchone()[0]
        counted.append((int(count), forms))
    return sorted(counted, key=lambda entry: entry[0])
