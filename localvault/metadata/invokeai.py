"""InvokeAI: the ``invokeai_metadata`` JSON chunk, and the older ``sd-metadata`` and ``Dream`` chunks."""

from __future__ import annotations

import re
import shlex
from typing import Any

from localvault.models import MAX_PROMPT_CHARS

from ._clean import Found, find_run_id, json_loads, number_or_text, parse_seed

_FIELD_KEYS = ("positive_prompt", "negative_prompt", "seed", "model")
#: A Dream chunk read: its prompt, quoted, and its flags fit in this.
_MAX_DREAM_CHARS = 2 * MAX_PROMPT_CHARS + 4096
_DREAM_FLAGS = {"-s": "steps", "-S": "seed", "-W": "width", "-H": "height", "-C": "cfg_scale", "-A": "sampler"}


def _as_dict(value: Any) -> dict[str, Any] | None:
    data = value if isinstance(value, dict) else json_loads(value)
    return data if isinstance(data, dict) else None


def _model_name(model: Any) -> Any:
    if isinstance(model, dict):
        for key in ("name", "model_name", "key"):
            if isinstance(model.get(key), str) and model[key].strip():
                return model[key]
        return None
    return model if isinstance(model, str) else None


def parse(text: Any, graph: Any = None) -> Found:
    """Read an ``invokeai_metadata`` chunk (and run ids from the ``invokeai_graph`` chunk, if given)."""
    data = _as_dict(text)
    if data is None:
        return Found()
    found = Found(
        source="invokeai",
        prompt=data.get("positive_prompt"),
        negative_prompt=data.get("negative_prompt"),
        seed=data.get("seed"),
        model=_model_name(data.get("model")),
        run_id=find_run_id(data, _as_dict(graph) if graph is not None else None),
    )
    found.settings = {str(k): v for k, v in data.items() if k not in _FIELD_KEYS}
    if isinstance(found.negative_prompt, str):
        found.settings["negative_prompt"] = found.negative_prompt
    if data.get("model") is not None:
        found.settings["invokeai_model"] = data["model"]
    if found.seed is not None and parse_seed(found.seed) is None:
        found.settings["seed"] = found.seed
    return found


def _prompt_text(prompt: Any) -> Any:
    if isinstance(prompt, list):
        parts = [p["prompt"] for p in prompt if isinstance(p, dict) and isinstance(p.get("prompt"), str)]
        return " ".join(parts) if parts else None
    return prompt if isinstance(prompt, str) else None


def _split_negative(prompt: Any) -> tuple[Any, Any]:
    """``"a cat [blurry] [lowres]"`` -> ``("a cat", "blurry lowres")``: every bracketed part is negative, as in InvokeAI 2.x."""
    if not isinstance(prompt, str):
        return prompt, None
    kept, negatives = _brackets(prompt)
    if not negatives:
        return prompt, None
    return re.sub(r"[ \t]{2,}", " ", kept).strip(), " ".join(negatives)


def _brackets(text: str) -> tuple[str, list[str]]:
    """(``text`` with each ``[…]`` on one line made a space, the parts inside), as ``re.findall(r"\\[(.*?)\\]")``
    finds them, in one pass: that pattern tried every ``[`` to the line's end (quadratic: 69 s for a line of
    100,000 of them, a review)."""
    kept: list[str] = []
    negatives: list[str] = []
    at = line_end = 0
    while (start := text.find("[", at)) >= 0:
        if start >= line_end:
            line_end = text.find("\n", start)
            line_end = len(text) if line_end < 0 else line_end
        end = text.find("]", start + 1, line_end)
        if end < 0:  # no "]" after it on its line: nor after any later "[" of that line
            kept.append(text[at:line_end])
            at = line_end
            if at >= len(text):
                break
            continue
        kept += [text[at:start], " "]
        negatives.append(text[start + 1:end])
        at = end + 1
    kept.append(text[at:])
    return "".join(kept), negatives


def parse_sd_metadata(text: Any) -> Found:
    """Read InvokeAI 2.x ``sd-metadata``: ``{"model_weights": …, "image": {"prompt": …, "seed": …}}``."""
    data = _as_dict(text)
    if data is None:
        return Found()
    image: dict[str, Any] = data["image"] if isinstance(data.get("image"), dict) else {}
    prompt, negative = _split_negative(_prompt_text(image.get("prompt")))
    found = Found(source="invokeai", prompt=prompt, negative_prompt=negative, seed=image.get("seed"))
    found.model = data.get("model_weights") or data.get("model")
    found.settings = {str(k): v for k, v in image.items() if k not in ("prompt", "seed")}
    for key in ("model_hash", "app_id", "app_version"):
        if key in data:
            found.settings[key] = data[key]
    if negative is not None:
        found.settings["negative_prompt"] = negative
    return found


def parse_dream(text: Any) -> Found:
    """Read an InvokeAI 1.x ``Dream`` chunk: ``"a prompt [negative]" -s 50 -S 42 -W 512 -H 512``."""
    if not isinstance(text, str) or not text.strip():
        return Found()
    text = text[:_MAX_DREAM_CHARS]  # (shlex takes ~0.5 s a MiB: the prompt, quoted, and its flags fit in this)
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    image: dict[str, Any] = {"prompt": words[0]} if words else {}
    for flag, value in zip(words[1:], words[2:], strict=False):
        if flag in _DREAM_FLAGS:
            image[_DREAM_FLAGS[flag]] = number_or_text(value)  # (as the JSON of later versions has them)
    return parse_sd_metadata({"image": image})
