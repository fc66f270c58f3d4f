"""Stable Diffusion WebUI (A1111, Forge) "parameters" text.

::

    a prompt, possibly
    on several lines
    Negative prompt: what to avoid
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model: sdxl

The settings line is the last one, except for the sections the Dynamic
Prompts extension adds after it (``Template: …``, ``Negative Template: …``),
which are kept in the settings as ``template`` and ``negative_template``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._clean import Found, json_too_long, number_or_text, parse_seed, snake_key

_KEY = re.compile(r"\s*(\w[\w \-/+.()]*?):\s*")
_VALUE = re.compile(r'("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_AFTER_JSON = re.compile(r"\s*(?:,|$)")
_JSON = json.JSONDecoder()
_NEGATIVE = "negative prompt:"
#: How every A1111 settings line starts: "Steps: <a number>".
_STEPS_FIRST = re.compile(r"\s*Steps: *\d+ *(?:,|$)")
_MAX_PARAM_LINE = 100_000
#: Sections the Dynamic Prompts extension writes after the settings line: (label, settings key).
_TRAILING_SECTIONS = (("Template:", "template"), ("Negative Template:", "negative_template"))


def parse_params_line(line: str) -> dict[str, Any] | None:
    """The ``Key: value, Key: "quoted, value"`` pairs of a line, or None if it is not one.

    A value may also be a JSON object or list, unquoted (A1111 writes an
    extension's dict so, e.g. ``Tiled Diffusion: {"Method": …}``): it comes
    back decoded. A line that starts with ``Steps: <number>`` (as every A1111
    settings line does) may hold pieces that are not pairs, as A1111's own reader
    allows: a key written alone (A1111 writes ``k`` for ``k: k``), or an old
    unquoted value holding a comma; they are passed over.
    """
    if len(line) > _MAX_PARAM_LINE or ":" not in line:
        return None
    lenient = _STEPS_FIRST.match(line) is not None
    pairs: dict[str, Any] = {}
    pos = 0
    while pos < len(line):
        key = _KEY.match(line, pos)
        if key is None:
            comma = line.find(",", pos)
            if not lenient or comma < 0:
                break
            pos = comma + 1
            continue
        name, start = key.group(1).strip(), key.end()
        if (found := _json_value(line, start)) is not None:
            pairs.setdefault(name, found[0])
            pos = found[1]
            continue
        value = _VALUE.match(line, start)
        if value is None:
            break
        pairs.setdefault(name, _unquote(value.group(1).strip()))
        pos = value.end()
    if line[pos:].strip() or len(pairs) < 3:
        return None
    return pairs


def _json_value(line: str, start: int) -> tuple[Any, int] | None:
    """A bare JSON object or list at ``start``, ending the pair: (value, where the next pair starts); else None."""
    if line[start:start + 1] not in ("{", "["):
        return None
    try:
        decoded, end = _JSON.raw_decode(line, start)
    except (ValueError, RecursionError):  # not JSON after all (or absurdly nested): read as text
        return None
    after = _AFTER_JSON.match(line, end)
    return (decoded, after.end()) if after is not None else None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
            return decoded if isinstance(decoded, str) else value
        except ValueError:
            return value[1:-1]
    return value


#: Parameters text read: its first and last halves of this, where it is longer (no real one comes near; a
#: crafted one of 32 MiB of settings-like lines took 15-28 s, a review). The prompt starts it, the settings end it.
MAX_PARAMETERS_CHARS = 1024 * 1024


def _ends(text: str) -> str:
    half = MAX_PARAMETERS_CHARS // 2
    return text if len(text) <= MAX_PARAMETERS_CHARS else f"{text[:half]}\n{text[-half:]}"


def looks_like_parameters(text: str) -> bool:
    """True when ``text`` ends with an A1111 settings line (and perhaps Dynamic Prompts' sections)."""
    return not json_too_long(text) and bool(_split(_ends(text).strip().splitlines())[1])


def _split(lines: list[str]) -> tuple[list[str], dict[str, Any], dict[str, str]]:
    """(the prompt's lines, the settings line's pairs, the trailing sections' texts) of parameters text."""
    params = parse_params_line(lines[-1]) if lines else None
    if params is not None:
        return lines[:-1], params, {}
    # Dynamic Prompts appends "Template: …" and/or "Negative Template: …", each of one or more lines.
    labels = tuple(label for label, _key in _TRAILING_SECTIONS)
    for index in range(1, len(lines)):
        if lines[index].startswith(labels) and (params := parse_params_line(lines[index - 1])):
            return lines[:index - 1], params, _sections("\n".join(lines[index:]))
    return lines, {}, {}


def _sections(text: str) -> dict[str, str]:
    """``Template: a\nNegative Template: b`` as {"template": "a", "negative_template": "b"} (either may be absent)."""
    (label, key), (negative_label, negative_key) = _TRAILING_SECTIONS
    if text.startswith(negative_label):
        return {negative_key: text[len(negative_label):].strip()}
    template, found, negative = text[len(label):].partition("\n" + negative_label)
    sections = {key: template.strip()}
    if found:
        sections[negative_key] = negative.strip()
    return sections


def parse(text: Any) -> Found:
    """Read prompt, negative prompt, seed, model and settings from A1111 parameters text."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    if not isinstance(text, str) or not text.strip() or json_too_long(text):  # (that is JSON, left unread)
        return Found()
    lines, params, sections = _split(_ends(text).strip().splitlines())
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        if not negative_lines and line.strip().lower().startswith(_NEGATIVE):
            negative_lines.append(line.strip()[len(_NEGATIVE):].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    found = Found(source="a1111", prompt="\n".join(prompt_lines).strip())
    if negative_lines:
        found.negative_prompt = "\n".join(negative_lines).strip()
        found.settings["negative_prompt"] = found.negative_prompt
    _apply_params(found, params)
    for key, section in sections.items():
        found.settings.setdefault(key, section)
    return found


def _apply_params(found: Found, params: dict[str, Any]) -> None:
    for key, raw in params.items():
        name = snake_key(key)
        if name == "seed":
            found.seed = parse_seed(raw)
            if found.seed is None:
                found.settings["seed"] = raw
        elif name == "model" and isinstance(raw, str):
            found.model = raw
        else:
            found.settings.setdefault(name, number_or_text(raw) if isinstance(raw, str) else raw)
    if found.model is None:  # Civitai's generator names its checkpoint only among its resources
        found.model = _civitai_checkpoint(found.settings.get("civitai_resources"))


def _civitai_checkpoint(resources: Any) -> str | None:
    """The checkpoint's name in a ``Civitai resources`` list (``{"type": "checkpoint", "modelName": …}``)."""
    if not isinstance(resources, list):
        return None
    for resource in resources:
        if isinstance(resource, dict) and resource.get("type") == "checkpoint":
            name, version = resource.get("modelName"), resource.get("modelVersionName")
            if isinstance(name, str) and name.strip():
                return f"{name} {version}" if isinstance(version, str) and version.strip() else name
    return None
