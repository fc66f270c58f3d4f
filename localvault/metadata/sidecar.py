"""Sidecar files next to a media file: ``NAME.json``, ``NAME.ext.json``, ``NAME.txt``, ``NAME.ext.txt``."""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from .._disk import NotRegularFileError, open_regular
from . import a1111, comfyui
from ._clean import Found, find_run_id, json_object, parse_seed, snake_key

MAX_SIDECAR_BYTES = 8 * 1024 * 1024
#: The key of a file's settings that names the sidecar its metadata was read from.
SIDECAR = "sidecar"
_ALIASES = {
    "prompt": ("prompt", "positive_prompt", "positive", "original_prompt"),
    "negative_prompt": ("negative_prompt", "negative", "negativePrompt", "negativeprompt"),
    "seed": ("seed", "noise_seed", "generation_seed"),
    "model": ("model", "model_name", "sd_model_name", "sd_model_checkpoint", "checkpoint", "ckpt_name", "model_used",
              "base_model", "use_stable_diffusion_model"),
}


#: The settings key naming a sidecar found and not read (``NAME.txt: Permission denied``).
UNREADABLE = "sidecar_unreadable"


def candidate_names(name: str) -> list[str]:
    """The names a sidecar of the file ``name`` may have, in order of preference."""
    stem = os.path.splitext(name)[0]
    return [name + ".json", stem + ".json", stem + ".txt", name + ".txt"]


def _first(data: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((data[k] for k in keys if data.get(k) is not None), None)


_MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")


def _model_name(model: Any) -> Any:
    if isinstance(model, dict):
        return _first(model, ("name", "model_name", "key"))
    if isinstance(model, str) and model.lower().endswith(_MODEL_FILE_SUFFIXES):  # a file's path (Easy
        return re.split(r"[\\/]", model)[-1] or model  # Diffusion's): its name ("org/model" ids are kept)
    return model


#: Easy Diffusion's text sidecar: one "Label: value" line each (its save_utils TASK_TEXT_MAPPING), the
#: prompt first; the labels of the fields read.
_EASY_DIFFUSION_LABELS = {"Prompt": "prompt", "Negative Prompt": "negative_prompt", "Seed": "seed",
                          "Stable Diffusion model": "use_stable_diffusion_model"}
_LABEL_LINE = re.compile(r"([A-Za-z][\w ()/.-]{0,60}): ?(.*)")


def _labelled_lines(text: str) -> dict[str, Any] | None:
    """Easy Diffusion's "Prompt: …\nNegative Prompt: …\nSeed: …" text as a mapping; None if it is not that."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Prompt:"):
        return None
    pairs: dict[str, Any] = {}
    for line in lines:
        labelled = _LABEL_LINE.fullmatch(line)
        if labelled is None:
            return None
        label, value = labelled.group(1), labelled.group(2).strip()
        pairs.setdefault(_EASY_DIFFUSION_LABELS.get(label, snake_key(label)), value)
    return pairs if "seed" in pairs or "use_stable_diffusion_model" in pairs else None


def from_mapping(data: dict[str, Any], source: str = "sidecar") -> Found:
    """A flat dict of ``prompt``, ``negative_prompt``, ``seed``, ``model`` and other settings (``source``: the
    tool that wrote it, when it is not a sidecar)."""
    if isinstance(data.get("parameters"), str):
        return a1111.parse(data["parameters"])
    prompt = data.get("prompt")
    if isinstance(prompt, dict) or (isinstance(prompt, str) and prompt.lstrip().startswith("{")):
        found = comfyui.parse(prompt, data.get("workflow"), extra=data)
        if not found.is_empty():
            return found
    found = Found(source=source)
    for name, keys in _ALIASES.items():
        setattr(found, name, _first(data, keys))
    found.model = _model_name(found.model)
    if isinstance(found.prompt, (dict, list)):
        found.prompt = None
    used = {k for keys in _ALIASES.values() for k in keys}
    found.settings = {str(k): v for k, v in data.items() if k not in used}
    if found.negative_prompt is not None:
        found.settings["negative_prompt"] = found.negative_prompt
    if found.seed is not None and parse_seed(found.seed) is None:
        found.settings["seed"] = found.seed
    found.run_id = find_run_id(data)
    return found


def parse_text(text: str, *, json_only: bool = False) -> Found:
    """A sidecar's contents: JSON (flat dict, A1111-like dict or ComfyUI graph) or A1111 parameters text.

    With ``json_only`` (a ``.json`` file), text that is not a JSON object says nothing: a file cut off
    while being written must not become the prompt. (A ``.txt`` file may hold a prompt that starts with
    ``{`` or ``[``, as dynamic-prompt and prompt-editing syntax do.)
    """
    data = json_object(text)
    if data is not None:
        nodes = comfyui.api_nodes(data)
        return comfyui.parse(data) if nodes else from_mapping(data)
    if json_only:
        return Found()
    labelled = _labelled_lines(text)
    return from_mapping(labelled) if labelled is not None else a1111.parse(text)


def _text_of(candidate: Path) -> str | None:
    """A sidecar's text; None when there is none to read: no regular file (a FIFO would block the read for ever),
    over MAX_SIDECAR_BYTES, or a link leading out of its folder (a link planted beside an image to a file of
    secrets made them its prompt, which a sync may publish)."""
    try:
        f = open_regular(candidate)
    except NotRegularFileError:
        return None
    with f:
        # What was opened is checked, not the name before: a link swapped in between was read (a race).
        folder, real = os.path.realpath(candidate.parent), os.path.realpath(candidate)
        opened = os.fstat(f.fileno())
        if os.path.commonpath([folder, real]) != folder or not os.path.samestat(opened, os.stat(real)):
            return None
        data = f.read(MAX_SIDECAR_BYTES + 1)  # (no more: one that is still growing is not read whole)
    return data.decode("utf-8-sig", "replace") if len(data) <= MAX_SIDECAR_BYTES else None


def read(path: Path, siblings: Collection[str] | None = None) -> Found:
    """What the first readable sidecar of ``path`` says, with source "sidecar"; empty if none.

    ``siblings``, when given, are the names in ``path``'s folder: others are not looked for.
    """
    unreadable: str | None = None
    for name in candidate_names(path.name):
        if siblings is not None and name not in siblings:  # most files have none: no Path, no stat
            continue
        candidate = path.with_name(name)
        try:
            if candidate == path or (text := _text_of(candidate)) is None:
                continue
        except FileNotFoundError:
            continue
        except OSError as exc:  # (its permissions, a disk error): recorded, not fatal
            unreadable = unreadable or f"{name}: {exc.strerror or type(exc).__name__}"
            continue
        found = parse_text(text, json_only=name.endswith(".json"))
        if not found.is_empty():
            found.source = "sidecar"
            found.settings.setdefault(SIDECAR, candidate.name)
            return found
    # Kept in the settings (an import warns of it): without it, a prompt missing from the vault said nothing why.
    return Found(settings={UNREADABLE: unreadable}) if unreadable else Found()
