"""Multipart uploads a sync started and has not finished, noted in the vault.

A store keeps (and bills) the parts of an unfinished multipart upload until
it is aborted. A sync aborts its own when an upload fails or is stopped, but
one killed outright (SIGKILL, a power cut) cannot: the next sync of the vault
aborts what the note still names. The note names this vault's own uploads
only, never another machine's still running (aborting those by key made that
machine's sync fail).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ..db import Database

_META_KEY = "open_multipart_uploads"


class OpenUploads:
    """The note: ``[bucket, key, upload id]`` of each multipart upload under way, in the vault's meta table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def left(self) -> list[list[str]]:
        """The uploads noted and not finished (a killed sync's, or those a failed abort left)."""
        value = self._db.get_meta(_META_KEY)
        return list(json.loads(value)) if value else []

    def opened(self, bucket: str, key: str, upload_id: str) -> None:
        self._change(lambda noted: [*noted, [bucket, key, upload_id]])

    def closed(self, upload_id: str) -> None:
        """The upload was completed or aborted."""
        self._change(lambda noted: [entry for entry in noted if entry[2] != upload_id])

    def _change(self, change: Callable[[list[list[str]]], list[list[str]]]) -> None:
        with self._db.write() as conn:  # (left() reads on this thread's connection: inside the transaction)
            self._db.set_meta(conn, _META_KEY, json.dumps(change(self.left())))
