"""Bring one file into a bucket: check it, copy it in while hashing, read its facts.

Shared by the workspace (new generations) and the library (direct adds).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from . import media, models
from ._source_file import settings_with_name, storable_name
from .errors import (
    InvalidInputError,
    LocalVaultError,
    NotFoundError,
    StorageError,
    UnsupportedMediaError,
)
from .files import FileStore, StagedFile
from .media import MediaFacts
from .models import GenerationInfo


@dataclass(frozen=True)
class Prepared:
    """A checked file, staged in its bucket under a temporary name."""

    staged: StagedFile
    facts: MediaFacts

    @property
    def extension(self) -> str:
        return self.facts.media_type.extension


def _link_target(link: Path) -> str:
    try:
        return os.readlink(link)
    except OSError:  # (removed meanwhile)
        return "?"


def prepare(
    files: FileStore,
    source: str | os.PathLike[str],
    bucket: str,
    folder: str,
    on_bytes: Callable[[int], None] | None = None,
) -> Prepared:
    """Check ``source`` (type by content, size, wholeness) and stage a copy of it.

    Raises a specific :class:`~localvault.errors.LocalVaultError` and leaves
    nothing behind when the file is refused.
    """
    source = models.check_path(source, "the file to add")
    models.check_callback(on_bytes, "on_bytes")
    try:
        is_file = source.is_file()
    except OSError as exc:  # a name too long, a loop of links
        raise StorageError(f"cannot use {source}: {exc.strerror or exc}") from None
    if not is_file:
        try:
            os.stat(source)
        except FileNotFoundError:  # (a symbolic link to nothing too: a disk not mounted)
            link = f" (a symbolic link to {_link_target(source)}, which does not)" if os.path.islink(source) else ""
            raise NotFoundError(f"{source} does not exist{link}; give the path of an image or video") from None
        except OSError as exc:  # a loop of links, a folder one may not look in
            raise StorageError(f"cannot use {source}: {exc.strerror or exc}") from None
        raise InvalidInputError(f"{source} is not a file; give the path of an image or video")
    media_type, _size = media.check_source(source)  # a wrong file is refused before it is copied
    staged = files.stage(source, bucket, folder, on_bytes=on_bytes)  # (it stops a file growing past 1 GiB)
    try:
        facts = _check_copy(files, staged, media_type, source)
    except BaseException:
        files.discard(staged)
        raise
    return Prepared(staged, facts)


def prepare_with_values(files: FileStore, source: str | os.PathLike[str], bucket: str, folder: str,
                        on_bytes: Callable[[int], None] | None, info: GenerationInfo | None, *, seed: Any,
                        prompt: Any, model: Any, settings: Any) -> tuple[Prepared, GenerationValues]:
    """:func:`prepare`, and the row's :func:`generation_values`, with the embedded metadata read from the
    staged copy: the bytes the row describes, even if a rig rewrites the source meanwhile.

    The arguments are checked before anything is copied; nothing is left behind on any error.
    """
    if info is not None and not isinstance(info, GenerationInfo):
        raise InvalidInputError(f"info must be a GenerationInfo (what localvault.metadata.read returns), not "
                                f"{type(info).__name__}; pass seed=, prompt=, model= and settings= for plain values")
    generation_values(source, GenerationInfo(), seed=seed, prompt=prompt, model=model, settings=settings)
    prepared = prepare(files, source, bucket, folder, on_bytes)
    try:
        copy = prepared.staged.temp_path if files.local else None
        values = generation_values(source, info, seed=seed, prompt=prompt, model=model, settings=settings, copy=copy)
    except BaseException:
        files.discard(prepared.staged)
        raise
    return prepared, values


#: The model of a file that names none.
UNKNOWN_MODEL = "unknown"
#: What a file lacking metadata (and arguments or options) gets: seed, prompt and model.
PLACEHOLDERS: dict[str, Any] = {"seed": 0, "prompt": "", "model": UNKNOWN_MODEL}


@dataclass(frozen=True)
class BatchEntry:
    """A file staged without fsync (``FileStore.stage(..., sync=False)``) for :meth:`localvault.workspace.Workspace.add_batch`.

    The values are already validated (``models.check_*``); ``settings_json`` is JSON text.
    """

    staged: StagedFile
    facts: MediaFacts
    job_id: str
    seed: int
    prompt: str
    model: str
    settings_json: str


class GenerationValues(NamedTuple):
    """The generation columns of a row, checked: seed, prompt, model and settings (as stored JSON)."""

    seed: int
    prompt: str
    model: str
    settings: str


def generation_values(source: str | os.PathLike[str], info: GenerationInfo | None, *, seed: Any, prompt: Any,
                      model: Any, settings: Any, copy: str | None = None) -> GenerationValues:
    """What an added file's row records: the arguments given, else ``info`` (read from the file when not
    given and something is missing: from its ``copy`` in the vault when there is one), else seed 0, prompt ""
    and model "unknown". Settings not given name the file (``source_file``: ``source``'s base name)."""
    if info is None:
        info = embedded_info(source, copy) if None in (seed, prompt, model, settings) else GenerationInfo()
    return GenerationValues(
        models.check_seed(seed if seed is not None else info.seed if info.seed is not None else PLACEHOLDERS["seed"]),
        models.check_prompt(prompt if prompt is not None else info.prompt or PLACEHOLDERS["prompt"]),
        models.check_model(model if model is not None else info.model or PLACEHOLDERS["model"]) or PLACEHOLDERS["model"],
        models.settings_json(settings) if settings is not None else settings_with_name(
            info.stored_settings(), storable_name(models.check_path(source, "the file to add").name)),
    )


def embedded_info(source: str | os.PathLike[str], copy: str | None = None) -> GenerationInfo:
    """What the file at ``source`` says of its generation (prompt, seed, model…), or nothing where it cannot tell.

    Read from ``copy`` (the file staged in the vault) when given, sidecars
    from beside ``source``. A file that cannot be read says nothing here:
    :func:`prepare` then reports why.
    """
    from .metadata import read

    try:
        return read(models.check_path(source, "the file to add"), contents=copy)
    except (LocalVaultError, OSError, ValueError):
        return GenerationInfo()


def _check_copy(files: FileStore, staged: StagedFile, media_type: models.MediaType, source: Path) -> MediaFacts:
    """Check what was copied, not only the source (a rig may rewrite a file while it is added): its facts.

    On a vault that is not on the local disk, the source's check stands.
    """
    if not files.local:
        return media.facts(source, media_type)
    copy = Path(staged.temp_path)
    if media.check_copy(copy, staged.size, source) is not media_type:
        raise UnsupportedMediaError(f"{source} changed while it was being added; add it again")
    return media.facts(copy, media_type, source.name)
