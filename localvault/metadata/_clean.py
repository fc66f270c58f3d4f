"""What every reader hands back, and how it is made safe for the models.

Readers fill a :class:`Found` with whatever they could read, raw; :func:`finish`
turns it into a :class:`GenerationInfo` whose text and settings pass the
validators of :mod:`localvault.models`, however odd the input was.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from localvault.models import (
    MAX_MODEL_CHARS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SETTINGS_BYTES,
    SURROGATES,
    GenerationInfo,
)

_PROMPT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ALL_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOT_SNAKE = re.compile(r"[^0-9a-z]+")
_SEED_TEXT = re.compile(r"\+?\d{1,25}")
_MAX_DEPTH = 64
#: JSON text longer than this is not parsed: its objects take ~28 times its size in memory (a 31 MiB graph of
#: tiny nodes took 866 MiB), and no settings over MAX_SETTINGS_BYTES are kept anyway.
MAX_JSON_CHARS = 4 * 1024 * 1024
#: Keys that name a generation run, in order of preference.
RUN_ID_KEYS = ("run_id", "job_id", "batch_id", "session_id", "prompt_id")


@dataclass
class Found:
    """Raw findings of one reader; nothing here is validated yet."""

    source: str = "none"
    prompt: Any = None
    negative_prompt: Any = None
    seed: Any = None
    model: Any = None
    settings: dict[str, Any] = field(default_factory=dict)
    run_id: Any = None

    def is_empty(self) -> bool:
        """True when the reader found nothing worth keeping."""
        values = (self.prompt, self.negative_prompt, self.seed, self.model, self.run_id)
        return all(v is None or v == "" for v in values) and not self.settings


def merge(first: Found, second: Found) -> Found:
    """Fill the gaps of ``first`` from ``second``; ``first`` wins wherever it has a value."""
    if second.is_empty():
        return first
    if first.is_empty():
        return second

    def pick(a: Any, b: Any) -> Any:
        return b if a is None or a == "" else a

    return Found(
        source=first.source,
        prompt=pick(first.prompt, second.prompt),
        negative_prompt=pick(first.negative_prompt, second.negative_prompt),
        seed=pick(first.seed, second.seed),
        model=pick(first.model, second.model),
        settings={**second.settings, **first.settings},
        run_id=pick(first.run_id, second.run_id),
    )


def json_object(text: Any) -> dict[str, Any] | None:
    """The JSON object ``text`` holds (text starting with "{"), or None."""
    data = json_loads(text) if isinstance(text, str) and text.lstrip().startswith("{") else None
    return data if isinstance(data, dict) else None


def json_too_long(text: Any) -> bool:
    """Whether ``text`` is JSON left unread for its length (over :data:`MAX_JSON_CHARS`, starting with "{" or
    "["): then it says nothing, and is not to be read as anything else (as A1111 text, it all became the prompt)."""
    return isinstance(text, str) and len(text) > MAX_JSON_CHARS and text.lstrip()[:1] in ("{", "[")


def json_loads(text: Any) -> Any:
    """Parse JSON text (str or bytes); None when it is not JSON, or longer than :data:`MAX_JSON_CHARS`."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    if not isinstance(text, str) or len(text) > MAX_JSON_CHARS:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def parse_seed(value: Any) -> int | None:
    """A seed as an int in 0..2**63-1, or None (for -1, out of range, not a number)."""
    if isinstance(value, bool):
        return None
    whole_float = isinstance(value, float) and math.isfinite(value) and value.is_integer()
    if isinstance(value, str):
        # str.strip, not the pattern's \s: int() refuses the separators U+001C..U+001F that \s takes as space.
        value = value.strip()
        value = int(value) if _SEED_TEXT.fullmatch(value) else None
    elif whole_float:
        value = int(value)
    if isinstance(value, int) and 0 <= value <= MAX_SEED:
        return value
    return None


@functools.lru_cache(maxsize=1024)
def snake_key(key: str) -> str:
    """``"CFG scale"`` -> ``"cfg_scale"``; ``"Model hash"`` -> ``"model_hash"``."""
    out = _NOT_SNAKE.sub("_", key.strip().lower()).strip("_")
    return out or "unnamed"


def find_run_id(*mappings: Any) -> Any:
    """The first run/batch id found under one of :data:`RUN_ID_KEYS` in the mappings."""
    for key in RUN_ID_KEYS:
        for mapping in mappings:
            if isinstance(mapping, dict):
                value = mapping.get(key)
                if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
                    return value
    return None


def _fix_surrogates(text: str) -> str:
    if SURROGATES.search(text):
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _storable(text: str) -> str:
    """Text a settings value or key can hold: valid Unicode, no NUL (PostgreSQL's jsonb refuses ``\\u0000``)."""
    return _fix_surrogates(text).replace("\x00", "")


def clean_prompt(value: Any) -> str | None:
    """Prompt text without control characters (\\n, \\r and \\t stay), at most MAX_PROMPT_CHARS."""
    return _cleaned_prompt(value)[0]


def _cleaned_prompt(value: Any) -> tuple[str | None, int]:
    """:func:`clean_prompt`'s text, and its length before it was cut to MAX_PROMPT_CHARS."""
    if value is None or isinstance(value, (dict, list, bool)):
        return None, 0
    text = _fix_surrogates(_PROMPT_CONTROL.sub("", str(value)))
    return text[:MAX_PROMPT_CHARS].strip() or None, len(text)


def clean_model(value: Any) -> str | None:
    """A model name on one line, at most MAX_MODEL_CHARS; None when empty."""
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    text = _fix_surrogates(_ALL_CONTROL.sub(" ", str(value))).strip()[:MAX_MODEL_CHARS].strip()
    return text or None


def clean_json(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy: NaN/inf become None, bytes are dropped, other objects become text."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _storable(value)
    if depth >= _MAX_DEPTH:
        return None
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(item, (bytes, bytearray)):
                continue
            out[_storable(str(key))] = clean_json(item, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [clean_json(item, depth + 1) for item in value if not isinstance(item, (bytes, bytearray))]
    if isinstance(value, (bytes, bytearray)):
        return None
    try:
        number = float(value)  # Pillow's IFDRational, Decimal, numpy scalars…
        return number if math.isfinite(number) else None
    except (TypeError, ValueError, OverflowError):
        return _storable(str(value))


def _encoded_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode())


def clean_settings(settings: dict[str, Any], beside: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON-safe settings that fit MAX_SETTINGS_BYTES together with the entries stored ``beside`` them
    (the largest values go first)."""
    out: dict[str, Any] = clean_json(settings)
    room = MAX_SETTINGS_BYTES - (_encoded_size(beside) if beside else 0)  # JSON of a merged dict: the sum
    if _encoded_size(out) <= room:
        return out
    # Each entry measured once (measuring the whole dict again for each entry dropped took minutes for
    # thousands of keys): json.dumps writes "{" + ", ".join("key: value") + "}".
    values = {key: _encoded_size(value) for key, value in out.items()}
    entries = {key: _encoded_size(key) + 2 + size for key, size in values.items()}
    total = 2 + sum(entries.values()) + 2 * (len(entries) - 1)
    for key in sorted(values, key=values.__getitem__, reverse=True):  # (stable: the first of equals first)
        if total <= room:
            break
        del out[key]
        total -= entries[key] + (2 if out else 0)
    return out


def finish(found: Found) -> GenerationInfo:
    """Validate-proof GenerationInfo from raw findings."""
    prompt, prompt_chars = _cleaned_prompt(found.prompt)
    negative, negative_chars = _cleaned_prompt(found.negative_prompt)
    source = found.source if not found.is_empty() else "none"
    # What an asset keeps adds these to the settings (GenerationInfo.stored_settings): room is kept for them.
    beside = {"negative_prompt": negative or "", "metadata_source": source}
    raw = found.settings if isinstance(found.settings, dict) else {}
    if negative is not None and raw.get("negative_prompt") == found.negative_prompt:  # (a reader's copy of it)
        raw = {**raw, "negative_prompt": negative}  # the same text as negative_prompt, cleaned
    # A prompt longer than an asset keeps is cut: how long it was says so (a rig cannot be asked for a shorter one).
    lengths = {"prompt_cut_from_chars": prompt_chars, "negative_prompt_cut_from_chars": negative_chars}
    raw = {**raw, **{name: chars for name, chars in lengths.items() if chars > MAX_PROMPT_CHARS}}
    settings = clean_settings(raw, beside)
    run_id = found.run_id
    run_text = clean_model(run_id) if run_id is not None else None
    info = GenerationInfo(
        prompt=prompt,
        negative_prompt=negative,
        seed=parse_seed(found.seed),
        model=clean_model(found.model),
        settings=settings,
        source=source,
        run_id=run_text,
    )
    if info.prompt is None and info.negative_prompt is None and info.seed is None and info.model is None \
            and not info.settings and info.run_id is None:
        return GenerationInfo()
    return info


_INTEGER = re.compile(r"-?\d{1,18}")
_DECIMAL = re.compile(r"-?\d{1,18}\.\d{1,18}")


def number_or_text(value: str) -> Any:
    """A setting written as text (``"50"``, ``"7.5"``) as the number it is; any other text as it is."""
    if _INTEGER.fullmatch(value):
        return int(value)
    if _DECIMAL.fullmatch(value):
        return float(value)
    return value
