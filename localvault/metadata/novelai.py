"""NovelAI's PNG text chunks.

``Description`` holds the prompt, ``Source`` the model and a hash
(``Stable Diffusion XL C1E1DE52``, ``NovelAI Diffusion V4.5 4BDE2A90``),
``Software`` is ``NovelAI``, and ``Comment`` a JSON object of the request:
``prompt``, ``uc`` (the negative prompt), ``seed``, ``steps``, ``scale``,
``sampler``…; version 4 adds ``v4_prompt`` / ``v4_negative_prompt``, whose
``caption.base_caption`` is the prompt and ``char_captions`` the characters'.
"""

from __future__ import annotations

import re
from typing import Any

from ._clean import Found, json_object, parse_seed

_HASH = re.compile(r"[0-9A-F]{8}")


def is_novelai(chunks: dict[str, Any]) -> bool:
    """Whether the chunks are NovelAI's: its ``Software``, or a ``Comment`` request with a ``uc``."""
    if chunks.get("Software") == "NovelAI":
        return True
    comment = json_object(chunks.get("Comment"))
    return comment is not None and "uc" in comment


def _base_caption(value: Any) -> Any:
    caption = value.get("caption") if isinstance(value, dict) else None
    return caption.get("base_caption") if isinstance(caption, dict) else None


def parse(chunks: dict[str, Any]) -> Found:
    """Prompt, negative prompt, seed, model and settings from NovelAI's chunks."""
    comment = json_object(chunks.get("Comment")) or {}
    found = Found(source="novelai")
    description = chunks.get("Description")
    found.prompt = next((p for p in (description, comment.get("prompt"), _base_caption(comment.get("v4_prompt")))
                         if isinstance(p, str) and p.strip()), None)
    negative = next((n for n in (comment.get("uc"), _base_caption(comment.get("v4_negative_prompt")))
                     if isinstance(n, str)), None)
    found.negative_prompt = negative
    found.seed = comment.get("seed")
    source = chunks.get("Source")
    if isinstance(source, str):
        found.model, model_hash = _model_and_hash(source)
        if model_hash is not None:
            found.settings["model_hash"] = model_hash
    found.settings.update({k: v for k, v in comment.items() if k not in ("prompt", "uc", "seed")})
    if negative is not None:
        found.settings["negative_prompt"] = negative
    if found.seed is not None and parse_seed(found.seed) is None:
        found.settings["seed"] = found.seed
    return found


def _model_and_hash(source: str) -> tuple[str, str | None]:
    """NovelAI's ``Source``, ``"Stable Diffusion XL C1E1DE52"``: (model, hash), or (source, None) without a hash.
    Read from its end: a pattern matched from its start took quadratic time on a run of spaces (a review: 65 s
    from a 355-byte file)."""
    text = source.strip()
    head, tail = text[:-8], text[-8:]
    if _HASH.fullmatch(tail) and head[-1:].isspace() and "\n" not in head.rstrip():
        return head.rstrip(), tail
    return text, None
