"""Which sampler of a ComfyUI API graph made the image: the first, of the branch that saved the file.

A graph may hold several samplers: a hires-fix or refiner pass, a FaceDetailer
after the generation, independent branches (ComfyUI saves the whole graph in
each output), a depth estimator's sampling before it.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from typing import Any

from .comfyui_contexts import is_context
from .comfyui_links import is_link, source, through
from .comfyui_links import resolve as _resolve
from .comfyui_workflow import Nodes

__all__ = ["find_sampler", "sort_key", "upstream"]


def sort_key(node_id: str) -> tuple[int, str]:
    """Node ids in the order of their (top graph's) numbers, other ids after them."""
    head = node_id.split(":")[0]
    return (int(head), node_id) if head.isdigit() and len(head) < 18 else (2**62, node_id)


def upstream(nodes: Nodes, node_id: str) -> Iterator[str]:
    """Ids of the nodes ``node_id`` depends on, nearest first (through switches, along the input each picks)."""
    queue, seen = deque([node_id]), {node_id}
    while queue:
        for value in (through(nodes, v) for v in nodes[queue.popleft()]["inputs"].values()):
            source = str(value[0]) if is_link(value) else None
            if source in nodes and source not in seen:
                seen.add(source)
                queue.append(source)
                yield source


#: A sampler's inputs for its prompts: conditionings, a guider, WanVideoWrapper's text_embeds, Impact's basic_pipe.
_SAMPLER_INPUTS = ("positive", "guider", "text_embeds", "basic_pipe")
#: Save nodes naming one file looked through (a real graph has one or two with the same prefix).
_MAX_SAVERS = 16


def _saved_by(nodes: Nodes, roots: list[str], file_name: str) -> str | None:
    """Of several first samplers (independent branches: ComfyUI saves the whole graph in each output), the one
    upstream of the save node that named this file (``<filename_prefix>_00001_.png``); None if that cannot be told
    (no such node, or one that several branches feed)."""
    name = file_name.lower()
    savers = [node_id for node_id, node in nodes.items()
              if isinstance(prefix := node["inputs"].get("filename_prefix"), str) and prefix
              and re.match(re.escape(prefix.replace("\\", "/").rsplit("/", 1)[-1].lower()) + r"_\d", name)]
    if len(savers) > _MAX_SAVERS:  # (a crafted graph: each is a walk of the whole graph)
        return None
    firsts = set(roots)
    matched = {node_id for saver in savers for node_id in upstream(nodes, saver) if node_id in firsts}
    return matched.pop() if len(matched) == 1 else None


def _adds_noise(nodes: Nodes, inputs: dict[str, Any]) -> bool:
    """Whether a sampler starts from noise it adds: not if its ``add_noise`` is off (KSamplerAdvanced's "disable",
    SamplerCustom's false) or its ``noise`` a ``DisableNoise`` (a refiner's pass, or a depth estimator's such as
    Lotus, which samples the image it is given)."""
    noise = source(nodes, inputs.get("noise"))
    if noise is not None and noise.get("class_type") == "DisableNoise":
        return False
    return "add_noise" not in inputs or _resolve(nodes, inputs["add_noise"], ("value", "boolean")) not in (
        False, "disable")


def find_sampler(nodes: Nodes, file_name: str | None = None) -> str | None:
    """The first sampler: one with no other sampler upstream (a FaceDetailer or a refiner comes after it); among
    several, the one whose branch saved the file named ``file_name``, else the lowest id. Samplers that add no
    noise are passed over if another adds some (:func:`_adds_noise`: a depth estimator feeding the generation is
    upstream of it). Found in one pass over the graph's links, whatever its size."""
    def is_sampler(node: dict[str, Any]) -> bool:  # (not one of rgthree's contexts: they carry a seed and prompts on)
        inputs = node["inputs"]
        return any(k in inputs for k in _SAMPLER_INPUTS) and any(k in inputs for k in ("seed", "noise_seed", "noise")) \
            and not is_context(node)

    candidates = [k for k in sorted(nodes, key=sort_key) if is_sampler(nodes[k])]
    candidates = [k for k in candidates if _adds_noise(nodes, nodes[k]["inputs"])] or candidates
    if len(candidates) < 2:
        return candidates[0] if candidates else None
    downstream: dict[str, list[str]] = {}
    for node_id, node in nodes.items():
        for value in node["inputs"].values():
            if is_link(value) and str(value[0]) in nodes:
                downstream.setdefault(str(value[0]), []).append(node_id)
    # Every node that some sampler feeds, directly or not: a candidate among them has a sampler upstream.
    queue = deque(n for c in candidates for n in downstream.get(c, ()))
    fed: set[str] = set()
    while queue:
        node_id = queue.popleft()
        if node_id not in fed:
            fed.add(node_id)
            queue.extend(downstream.get(node_id, ()))
    roots = [c for c in candidates if c not in fed] or candidates[:1]
    return (_saved_by(nodes, roots, file_name) if len(roots) > 1 and file_name else None) or roots[0]
