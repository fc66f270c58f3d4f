"""Bring one file into a bucket: check it, copy it in while hashing, read its facts.

Shared by the workspace (new generations) and the library (direct adds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import media
from .errors import StorageError
from .files import FileStore, StagedFile
from .media import MediaFacts


@dataclass(frozen=True)
class Prepared:
    """A checked file, staged in its bucket under a temporary name."""

    staged: StagedFile
    facts: MediaFacts

    @property
    def extension(self) -> str:
        return self.facts.media_type.extension


def prepare(
    files: FileStore,
    source: Path,
    bucket: str,
    folder: str,
    on_bytes: Callable[[int], None] | None = None,
) -> Prepared:
    """Check ``source`` (type by content, size, wholeness) and stage a copy of it.

    Raises a specific :class:`~localvault.errors.LocalVaultError` and leaves
    nothing behind when the file is refused.
    """
    source = Path(source)
    if not source.is_file():
        raise StorageError(f"{source} is not a file; give the path of an image or video")
    media_type, _size = media.check_source(source)
    facts = media.facts(source, media_type)
    staged = files.stage(source, bucket, folder, on_bytes=on_bytes)
    return Prepared(staged, facts)
