"""Typed records of the vault: what the public API takes and returns.

Validation rules live here, once, so the library, the CLI and the importers
refuse the same bad input with the same message.
"""

from __future__ import annotations

import decimal
import enum
import math
import numbers
import os
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

# Re-exported: where the other checks of input are looked for (``models.check_settings``).
from ._settings_check import MAX_SETTINGS_BYTES as MAX_SETTINGS_BYTES
from ._settings_check import MAX_SETTINGS_DEPTH as MAX_SETTINGS_DEPTH
from ._settings_check import check_settings as check_settings
from ._settings_check import settings_json as settings_json
from ._spelling import composed
from .errors import InvalidInputError

MAX_FILE_BYTES = 1024 * 1024 * 1024
MAX_PROMPT_CHARS = 65_536
MAX_TITLE_CHARS = 300
MAX_TAG_CHARS = 64
MAX_TAGS = 64
MAX_NAME_CHARS = 100
MAX_DESCRIPTION_CHARS = 2_000
MAX_MODEL_CHARS = 500
MAX_SEED = 2**63 - 1
#: A job's positions (PostgreSQL's ``integer``).
MAX_ASSET_INDEX = 2**31 - 1

#: Control characters (a line break, a tab, NUL): none may stand in a one-line name, nor be printed raw.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Lone surrogates: what Python makes of bytes that are not UTF-8 (a shell argument, a file name); not storable.
SURROGATES = re.compile("[\ud800-\udfff]")


class AssetType(str, enum.Enum):
    """Kind of asset, derived from the file's bytes."""

    image = "image"
    video = "video"


class MediaType(str, enum.Enum):
    """The four media types a vault accepts, decided by content sniffing."""

    jpeg = "image/jpeg"
    png = "image/png"
    webp = "image/webp"
    mp4 = "video/mp4"

    @property
    def extension(self) -> str:
        return {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "video/mp4": "mp4"}[self.value]

    @property
    def asset_type(self) -> AssetType:
        return AssetType.video if self is MediaType.mp4 else AssetType.image


class Visibility(str, enum.Enum):
    """Who may see a library asset once it is synced."""

    private = "private"
    unlisted = "unlisted"
    public = "public"


#: A :class:`Visibility` by its name, as the library's calls take it too.
VisibilityName = Literal["private", "unlisted", "public"]


# ---------------------------------------------------------------- validators


#: Where a user finds a valid value, by what the id is of (:func:`check_uuid`).
_UUID_HINTS = {
    "user id": "use your account's id (on Supabase, auth.users.id), or leave it out for a new one",
    "job id": "use a job_id shown by 'localvault ls workspace --json', or leave --job out for a new job",
}


def canonical_uuid(text: str) -> str | None:
    """``text`` as a lower-case canonical UUID, or None if it is not one."""
    text = text.strip()
    # (uuid.UUID reads the digits with int(): it takes "+0f25…" for "00f25…", and "6_7f" for "67f")
    if not re.fullmatch(r"[0-9a-f-]+", text.lower().removeprefix("urn:uuid:").strip("{}"), re.ASCII):
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def check_uuid(value: str, what: str = "id") -> str:
    """Return ``value`` as a lower-case canonical UUID or raise InvalidInputError."""
    if (canonical := canonical_uuid(str(value))) is None:
        hint = _UUID_HINTS.get(what, "use the full id shown by 'localvault ls'")
        raise InvalidInputError(f"{what} {value!r} is not a valid UUID; {hint}")
    return canonical


def check_seed(value: Any) -> int:
    """A generation seed: an integer from 0 to 2**63-1."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value, re.ASCII):
            value = int(value)
        else:
            kind = "a float" if isinstance(value, float) else "not a whole number"
            raise InvalidInputError(f"seed {value!r} is {kind}; give an integer (int, or its digits as text) from 0 "
                                    f"to {MAX_SEED}")
    if not 0 <= value <= MAX_SEED:
        raise InvalidInputError(f"seed {value} is out of range; give an integer from 0 to {MAX_SEED}")
    return int(value)


def check_flag(value: Any, what: str) -> bool:
    """``value`` if it is True or False; InvalidInputError for anything else (``repair="no"`` is truthy)."""
    if not isinstance(value, bool):
        raise InvalidInputError(f"{what} must be True or False, not {value!r}")
    return value


def check_callback(value: Any, what: str) -> Any:
    """``value`` if it is None or callable; InvalidInputError for anything else (which would fail only at the
    first event, with a TypeError, after part of the work was done)."""
    if value is not None and not callable(value):
        raise InvalidInputError(f"{what} must be a function (or None), not {value!r}")
    return value


def asset_given(value: Any, kind: type[AssetT], get: Callable[[str], AssetT], held: Callable[[str], bool]) -> AssetT:
    """The stored asset, given as itself or by its id (looked up with ``get``). An asset object is checked with
    ``held`` (one indexed lookup, not a whole row): another user's, or one deleted since, is NotFoundError as its
    id would be. InvalidInputError for anything else."""
    if isinstance(value, kind):
        return value if held(value.id) else get(value.id)  # (get raises its NotFoundError)
    if isinstance(value, str):
        return get(value)
    raise InvalidInputError(f"give a {kind.__name__} or its id, not {type(value).__name__}")


def check_sha256(value: Any) -> str:
    """A sha256 as 64 hex digits, in lower case; InvalidInputError otherwise."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        raise InvalidInputError(f"{value!r} is not a sha256 (64 hex digits)")
    return value.strip().lower()


def check_unicode(value: str, what: str) -> str:
    """``value`` if it can be stored (SQLite, TOML, PostgreSQL); InvalidInputError for the lone surrogates
    Python makes of bytes that are not UTF-8 (a shell argument, a file name)."""
    if SURROGATES.search(value):
        raise InvalidInputError(f"{what} is not valid Unicode (bytes that are not UTF-8?); give it as UTF-8 text")
    return value


def _check_text(value: Any, what: str, max_chars: int, *, allow_newlines: bool, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be text, not {type(value).__name__}")
    if len(value) > max_chars:
        raise InvalidInputError(f"{what} is {len(value):,} characters long; the limit is {max_chars:,}")
    bad = value.replace("\n", "").replace("\t", "").replace("\r", "") if allow_newlines else value
    if CONTROL.search(bad):
        raise InvalidInputError(f"{what} contains control characters; remove them")
    check_unicode(value, what)
    if not allow_empty and not value.strip():
        raise InvalidInputError(f"{what} must not be empty")
    return value


def check_prompt(value: Any) -> str:
    return _check_text(value, "prompt", MAX_PROMPT_CHARS, allow_newlines=True, allow_empty=True)


def check_model(value: Any) -> str:
    return _check_text(value, "model", MAX_MODEL_CHARS, allow_newlines=False, allow_empty=True).strip()


def check_visibility(value: object) -> Visibility:
    """A visibility, given as the enum or its name."""
    try:
        return Visibility(value)
    except ValueError:
        raise InvalidInputError(f"visibility {value!r} is not one of private, unlisted, public") from None


def check_title(value: Any) -> str | None:
    if value is None:
        return None
    return _check_text(value, "title", MAX_TITLE_CHARS, allow_newlines=False, allow_empty=False).strip()


def check_name(value: Any) -> str:
    """A collection's name, composed (:func:`._spelling.composed`); not shaped as an id, since a collection is named by
    id or name (another collection's id as a name would make every call by that name act on the other one)."""
    value = composed(value) if isinstance(value, str) else value  # (composed first: its length is the stored one)
    name = _check_text(value, "collection name", MAX_NAME_CHARS, allow_newlines=False, allow_empty=False).strip()
    try:
        uuid.UUID(name)
    except ValueError:
        return name
    raise InvalidInputError(f"collection name {name!r} has the shape of an id, and collections are named by id "
                            "or name; choose another name")


def check_description(value: Any) -> str | None:
    """A description; None (no description) for None or blank text."""
    if value is None:
        return None
    text = _check_text(value, "description", MAX_DESCRIPTION_CHARS, allow_newlines=True, allow_empty=True)
    return text if text.strip() else None


def check_path(value: Any, what: str) -> Path:
    """A file or folder path given as text or a path object (``~`` expanded)."""
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        text = os.fspath(value)
        if isinstance(text, str) and text.strip() and "\0" not in text:
            return Path(text).expanduser()
    raise InvalidInputError(f"{what} must be a path (text or pathlib.Path, without NUL characters), not {value!r}")


def check_search(value: Any) -> str:
    return _check_text(value, "the search text", MAX_PROMPT_CHARS, allow_newlines=True, allow_empty=True)


def check_tag(value: Any) -> str:
    """A tag, stripped and composed (:func:`._spelling.composed`)."""
    value = composed(value) if isinstance(value, str) else value
    return _check_text(value, "tag", MAX_TAG_CHARS, allow_newlines=False, allow_empty=False).strip()


def check_tags(values: Any) -> list[str]:
    """Validate tags; strip and compose them (:func:`check_tag`), drop repeats, keep the order given."""
    if isinstance(values, str) or not hasattr(values, "__iter__"):
        raise InvalidInputError("tags must be a list of strings")
    out: dict[str, None] = {}  # ordered, and a set's lookups: a list's made 200,000 tags take minutes
    for value in values:
        out[check_tag(value)] = None
        if len(out) > MAX_TAGS:  # stop here: the rest of a huge list is never read
            raise InvalidInputError(f"more than {MAX_TAGS} tags given; at most {MAX_TAGS} are allowed")
    return list(out)


def check_whole_number(value: Any, what: str, minimum: int, maximum: int | None = None, *, hint: str = "") -> int:
    """``value`` if it is an int (not a bool) from ``minimum`` to ``maximum`` (no upper bound if None);
    InvalidInputError otherwise, naming ``what`` and the range (``hint`` adds what to do instead)."""
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        allowed = f"from {minimum:,} to {maximum:,}" if maximum is not None else f"of {minimum:,} or more"
        raise InvalidInputError(f"{what} must be a whole number {allowed}{hint}, not {value!r}")
    return value


def check_seconds(value: Any, what: str, *, above_zero: bool = False) -> float:
    """A duration: a finite real number (an int, a float, numpy's or a Decimal; not a bool) of 0 or more (more
    than 0 if ``above_zero``), as a float; InvalidInputError otherwise."""
    if (isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal))
            or not math.isfinite(value) or value < 0 or (above_zero and value == 0)):
        raise InvalidInputError(f"{what} must be a number of seconds {'above 0' if above_zero else 'of 0 or more'}, "
                                f"not {value!r}")
    return float(value)


# -------------------------------------------------------------------- models


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, use_enum_values=False)


class GenerationInfo(_Record):
    """What a generation rig recorded about how an image or video was made."""

    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    model: str | None = None
    #: Everything else: steps, sampler, cfg, size, the raw graph…
    settings: dict[str, Any] = Field(default_factory=dict)
    #: Where the information came from: "a1111", "comfyui", "invokeai", "fooocus", "swarmui", "novelai",
    #: "easydiffusion", "drawthings", "embedded" (a plain "prompt" entry), "sidecar" or "none".
    source: str = "none"
    #: An id of the generation run, where the file carries one (groups files into a job).
    run_id: str | None = None

    def stored_settings(self) -> dict[str, Any]:
        """The ``generation_settings`` an asset keeps: the settings plus negative prompt and metadata source."""
        settings = dict(self.settings)
        if self.negative_prompt and "negative_prompt" not in settings:
            settings["negative_prompt"] = self.negative_prompt
        if self.source != "none":
            settings.setdefault("metadata_source", self.source)
        return settings


class WorkspaceAsset(_Record):
    """A freshly generated asset in the staging area; it expires after 7 days."""

    id: str
    user_id: str
    asset_type: AssetType
    temp_storage_path: str
    file_size_bytes: int
    mime_type: MediaType
    duration_seconds: float | None
    job_id: str
    asset_index: int
    generation_seed: int
    original_prompt: str
    model_used: str
    generation_settings: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    thumbnail_path: str | None
    width: int | None
    height: int | None
    sha256: str


class LibraryAsset(_Record):
    """An asset the user keeps, with title, tags, favourite, visibility and collection."""

    id: str
    user_id: str
    asset_type: AssetType
    storage_path: str
    file_size_bytes: int
    mime_type: MediaType
    duration_seconds: float | None
    original_prompt: str
    model_used: str
    generation_seed: int
    generation_settings: dict[str, Any]
    title: str | None
    tags: list[str]
    is_favorite: bool
    visibility: Visibility
    collection_id: str | None
    original_asset_id: str | None
    thumbnail_path: str | None
    width: int | None
    height: int | None
    sha256: str
    created_at: datetime
    updated_at: datetime


class Collection(_Record):
    """A named group of library assets; ``asset_count`` is kept exact by the database."""

    id: str
    user_id: str
    name: str
    description: str | None
    asset_count: int
    created_at: datetime
    updated_at: datetime


AssetT = TypeVar("AssetT", WorkspaceAsset, LibraryAsset)


class Page(BaseModel, Generic[AssetT]):
    """One page of a listing (``Page[LibraryAsset]``, ``Page[WorkspaceAsset]``); pass ``next_cursor`` back to
    get the next one."""

    items: list[AssetT]
    next_cursor: str | None = None
