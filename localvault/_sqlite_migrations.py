"""The vault's local schema: its numbered SQL migrations (``schema/sqlite/NNNN_*.sql``), split into statements."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from importlib import resources


def migrations() -> list[tuple[int, str]]:
    """Every migration, as (number, SQL script), oldest first."""
    folder = resources.files("localvault") / "schema" / "sqlite"
    found = []
    for entry in folder.iterdir():
        match = re.match(r"(\d{4})_.*\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    return sorted(found)


def schema_version() -> int:
    """The newest local schema version this package knows."""
    return migrations()[-1][0]


def statements(script: str) -> Iterator[str]:
    """Split a SQL script into complete statements (triggers keep their bodies)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer
            buffer = ""
    if buffer.strip() and not all(line.strip().startswith("--") or not line.strip() for line in buffer.splitlines()):
        yield buffer
