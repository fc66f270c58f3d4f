"""Read one file for an import, once: check it, read its metadata, hash it (used by :mod:`localvault.importer`).

A file small enough is read into memory in one go and everything comes from
those bytes; a larger one is checked and hashed as a stream.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

from . import media, models
from ._disk import NotRegularFileError, SourceReadError, open_regular_fd, stream_digest
from ._intake import Candidate, group_key
from ._source_file import settings_with_name
from .errors import StorageError
from .files import WORKSPACE_BUCKET, FileStore, StagedFile
from .ingest import PLACEHOLDERS
from .models import GenerationInfo


@dataclass
class Examined:
    """A file read for import, on its way through the pipeline."""

    candidate: Candidate
    sha256: str
    info: GenerationInfo
    size: int
    data: bytes | None = None  # the file's bytes until they are staged (small files only)
    facts: media.MediaFacts | None = None
    values: tuple[int, str, str, str] | None = None  # (seed, prompt, model, settings JSON); None: already had
    job_id: str = ""
    group: str | None = None  # its _intake.group_key, computed by the worker (it is pure Python work)
    staged: StagedFile | None = None
    #: (device, inode, size, mtime_ns) of the file that was read: a hard link or a --move deletion must find
    #: the very same file there (a rig may have replaced it meanwhile).
    identity: tuple[int, int, int, int] | None = None


def examine(candidate: Candidate, known: Container[str], *, in_memory_bytes: int, prompt: str | None = None,
            model: str | None = None) -> Examined:
    """Check a file's type and wholeness, read its metadata and hash it, reading it once.

    Files up to ``in_memory_bytes`` keep their bytes (``data``) for staging.
    A file whose hash is in ``known`` comes back without ``values``.
    ``prompt`` and ``model`` fill what the file lacks.
    """
    from .metadata import read as read_metadata

    path = Path(candidate.path)
    try:  # what the scan found, never followed: a link swapped in since could lead out of the folder
        fd = open_regular_fd(candidate.target or candidate.path, follow=False)
    except NotRegularFileError:  # a scan took a regular file, but a rig may have replaced it since
        raise StorageError(f"{candidate.path} is no longer a regular file") from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise StorageError(f"{candidate.path} became a symbolic link since it was found; not followed") from None
    # Everything comes from this one open file: a rig replacing the file meanwhile cannot pair one
    # version's metadata or size with another's bytes.
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        data: bytes | None = None
        # Hashed first: a file already taken is read for its sidecar (a late one fills its asset), not for
        # parameters hidden in its pixels, which would be decoded again at every import of the folder.
        if st.st_size <= in_memory_bytes:
            data = whole = _read_all(fd, st.st_size)
            media_type = media.check_data(whole, path)
            sha = hashlib.sha256(whole).hexdigest()
            size = len(whole)
        else:
            size = st.st_size
            media_type = media.check_open(handle, size, path)
            handle.seek(0)
            sha = stream_digest(handle)
        taken = sha in known  # (once: in a worker process, a query of the vault's database)
        info = read_metadata(path, data=data, handle=handle if data is None else None, siblings=candidate.sidecars,
                             pixels=not taken)
        examined = Examined(candidate, sha, info, size, group=group_key(info), identity=file_identity(st))
        if taken:
            return examined
        if data is not None and media_type is not models.MediaType.mp4:
            examined.facts = _image_facts(data, media_type, path.name)
        else:
            examined.facts = media.facts(io.BytesIO(data) if data is not None else handle, media_type, path.name)
    examined.values = row_values(info, prompt, model, candidate.source_file)
    examined.data = data
    return examined


def row_values(info: GenerationInfo, prompt: str | None, model: str | None,
               source_file: str | None = None) -> tuple[int, str, str, str]:
    """(seed, prompt, model, settings JSON) an imported file's row records: its metadata, else the import's
    ``prompt`` and ``model``, else the placeholders; its settings name the file it came from (``source_file``,
    see :mod:`localvault._source_file`) when given."""
    return (
        models.check_seed(info.seed if info.seed is not None else PLACEHOLDERS["seed"]),
        models.check_prompt(info.prompt or prompt or PLACEHOLDERS["prompt"]),
        models.check_model(info.model or model or PLACEHOLDERS["model"]) or PLACEHOLDERS["model"],
        settings_with_name(info.stored_settings(), source_file),
    )


def stage(store: FileStore, ready: Examined, mode: str, folder: str, name: str | None = None) -> StagedFile:
    """Write (or, for ``link``, hard-link) an examined file into the workspace's ``folder``.

    Under a temporary name (``name``, or a random one) and without fsync: the
    batch commit makes it durable and gives it its final name. Drops the
    bytes ``ready`` held.
    """
    try:
        return _stage(store, ready, mode, folder, name)
    except OSError as exc:  # (a StorageError is one too)
        if isinstance(exc, (SourceChangedError, SourceReadError)):  # the source's side: final
            raise
        reason = str(exc) if isinstance(exc, StorageError) else f"cannot write it into the vault: {exc.strerror or exc}"
        raise StagingError(reason) from None
    finally:
        ready.data = None


def _stage(store: FileStore, ready: Examined, mode: str, folder: str, name: str | None) -> StagedFile:
    """:func:`stage` without its error handling."""
    staged = None
    # --move copies too: a link would share the inode with the source until it is deleted after the commit,
    # and a rig saving over that name in place meanwhile would change the vault's bytes under their sha256.
    if mode == "link":
        staged = store.stage_link(Path(ready.candidate.path), ready.sha256, ready.size, WORKSPACE_BUCKET, folder,
                                  name)
        if staged is not None and link_outdated(staged, ready):  # replaced since it was read
            store.discard(staged)
            raise changed_while_importing(ready.candidate.path)
    if staged is None and ready.data is not None:
        staged = store.stage_data(ready.data, ready.sha256, WORKSPACE_BUCKET, folder, sync=False, name=name)
    elif staged is None:
        path = Path(ready.candidate.path)
        staged = store.stage(path, WORKSPACE_BUCKET, folder, sync=False, name=name)
        if staged.sha256 != ready.sha256 or staged.size != ready.size:
            store.discard(staged)
            raise changed_while_importing(path)
    return staged


class StagingError(StorageError):
    """A file could not be written into the vault (disk full, read-only, I/O error): worth trying again later."""


class SourceChangedError(StorageError):
    """A file's bytes changed between its reading and its staging or commit."""


def changed_while_importing(path: str | os.PathLike[str]) -> StorageError:
    """The refusal of a file whose bytes changed between its reading and its commit."""
    return SourceChangedError(f"{os.fspath(path)} changed while it was being imported; import it again")


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one file from another put in its place: device, inode, size and mtime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def link_outdated(staged: StagedFile, ready: Examined) -> bool:
    """Whether a hard-linked staged file is no longer the file that was read (replaced, or rewritten in place).

    Checked when the link is made, and again just before the commit: a rig
    saving over an existing name keeps the inode, so the link would carry the
    new bytes under the old sha256. A copy is never outdated.
    """
    if not staged.linked:
        return False
    try:
        return file_identity(os.lstat(staged.temp_path)) != ready.identity
    except OSError:  # gone: nothing to commit
        return True


def _image_facts(data: bytes, media_type: models.MediaType, name: str) -> media.MediaFacts:
    return media.image_facts(io.BytesIO(data), media_type, name)  # (a BytesIO of bytes shares them: no copy)


def _read_all(fd: int, size: int) -> bytes:
    """The file's bytes to its end, in one read when it is ``size`` bytes (the usual case: 4 system calls a file)."""
    first = os.read(fd, size + 1)
    if len(first) <= size:  # a regular file reads short only at its end
        return first
    parts = [first]  # it grew since fstat: read on to the end, as a plain read() would
    while part := os.read(fd, 1024 * 1024):
        parts.append(part)
    return b"".join(parts)


__all__ = ["Examined", "examine", "row_values", "stage", "StagingError", "SourceChangedError", "file_identity", "link_outdated", "changed_while_importing", "PLACEHOLDERS"]
