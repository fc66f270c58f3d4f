"""Multipart uploads a sync started and has not finished, noted in the vault.

A store keeps (and bills) the parts of an unfinished multipart upload until
it is completed or aborted. An upload an interruption cut short (a lost
connection, Ctrl-C, a kill) stays noted with the sha256 of its file: the next
attempt at that file goes on with it (:mod:`.multipart`). A sync that ends with
every file sent aborts what the note still names, and a sync's start aborts
what cannot be gone on with (a note without a sha256, an older version's).
The note names this vault's own uploads only, never another machine's still
running (aborting those by key made that machine's sync fail).

An upload is noted twice: before the store is asked to create it (its key: the
store may create it and its answer be lost, to a kill or a dropped connection,
leaving an upload no id names) and once created (its id). For a key noted
without an id, the sync's end (or the next sync) aborts the store's unfinished
uploads of that key, but those noted to be gone on with: the one exception to
"this vault's own only" (another machine's upload of the very same asset, from
a copy of this vault, at that moment; its sync then sends it again). The
store's dates of its uploads cannot tell them apart: clocks differ, and some
stores (moto) give a fixed date.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ..db import Database

_META_KEY = "open_multipart_uploads"
#: ``{upload id: sha256}`` of the noted uploads that may be gone on with: a key of its own, so that the note itself
#: keeps the ``[bucket, key, id]`` entries every version reads (an older one aborts these, as it did its own).
_FILES_KEY = "multipart_upload_files"


class OpenUploads:
    """The note: ``[bucket, key, upload id]`` of each multipart upload under way or left open by an interruption,
    and ``[bucket, key, ""]`` of each one being created, in the vault's meta table; beside it, the sha256 of the
    file each upload that may be gone on with sends."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def left(self) -> list[list[str]]:
        """The uploads noted and not finished (a killed sync's, or those a failed abort left)."""
        value = self._db.get_meta(_META_KEY)
        return [list(entry[:3]) for entry in json.loads(value)] if value else []

    def creating(self, bucket: str, key: str) -> list[str]:
        """Note an upload about to be created; the note to hand to :meth:`opened` once it is."""
        intent = [bucket, key, ""]
        self._change(lambda noted: [*noted, intent])
        return intent

    def opened(self, bucket: str, key: str, upload_id: str, intent: list[str] | None = None, sha256: str = "") -> None:
        """The upload was created: its id (and the sha256 of the file it sends, which lets an interrupted
        upload be gone on with) replaces the note made by :meth:`creating` (``intent``)."""
        self._change(lambda noted: [*_without(noted, intent), [bucket, key, upload_id]],
                     {upload_id: sha256} if sha256 else {})

    def resumable(self, bucket: str, key: str, sha256: str) -> list[str]:
        """The ids of the uploads noted that send this very file (``sha256``) to ``key``, the latest first."""
        files = self._files()
        return [upload_id for noted_bucket, noted_key, upload_id in reversed(self.left())
                if (noted_bucket, noted_key) == (bucket, key) and upload_id and files.get(upload_id) == sha256]

    def going_on(self) -> set[str]:
        """The ids of the uploads that may be gone on with (their file's sha256 is noted)."""
        return set(self._files())

    def dropped(self, intent: list[str]) -> None:
        """The uploads begun under ``intent`` are aborted, or none was."""
        self._change(lambda noted: _without(noted, intent))

    def closed(self, upload_id: str) -> None:
        """The upload was completed or aborted."""
        self._change(lambda noted: [entry for entry in noted if entry[2] != upload_id])

    def _files(self) -> dict[str, str]:
        value = self._db.get_meta(_FILES_KEY)
        return dict(json.loads(value)) if value else {}

    def _change(self, change: Callable[[list[list[str]]], list[list[str]]], files: dict[str, str] | None = None
                ) -> None:
        with self._db.write() as conn:  # (left() reads on this thread's connection: inside the transaction)
            noted = change(self.left())
            ids = {entry[2] for entry in noted}
            kept = {upload_id: sha for upload_id, sha in {**self._files(), **(files or {})}.items() if upload_id in ids}
            self._db.set_meta(conn, _META_KEY, json.dumps(noted))
            self._db.set_meta(conn, _FILES_KEY, json.dumps(kept))


def _without(noted: list[list[str]], entry: list[str] | None) -> list[list[str]]:
    """``noted`` less its first entry equal to ``entry``."""
    if entry is None or entry not in noted:
        return noted
    at = noted.index(entry)
    return noted[:at] + noted[at + 1:]
