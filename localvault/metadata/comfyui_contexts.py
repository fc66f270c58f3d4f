"""rgthree's context nodes: one link carrying a model, its prompts, a seed… along a graph (rgthree-comfy's
py/context_utils.py), each field also given on an output of its own.

A ``Context (rgthree)`` or ``Context Big (rgthree)`` sets the fields it is given
(``model``, ``positive``, ``seed``…) and keeps its ``base_ctx``'s others, every
field even where its outputs show fewer (a small context carries a big one's
steps on); its output 0 is the context, output k the k-th field of its kind.
``Context Switch`` passes on the first of its ``ctx_01``… contexts that is
connected; ``Context Merge`` each field of the last of them that has it.
Following the links is :mod:`.comfyui_links`'s.
"""

from __future__ import annotations

import re
from typing import Any, Literal

#: The fields on the outputs of Context, Context Switch and Context Merge, from output 1 on (0 is the context).
FIELDS = ("model", "clip", "vae", "positive", "negative", "latent", "images", "seed")
#: The fields on the outputs of the Big ones: every field a context holds (denoise, last, since 2024).
BIG_FIELDS = (*FIELDS, "steps", "step_refiner", "cfg", "ckpt_name", "sampler", "scheduler", "clip_width",
              "clip_height", "text_pos_g", "text_pos_l", "text_neg_g", "text_neg_l", "mask", "control_net", "denoise")
_CONTEXT = re.compile(r"(Dynamic )?Context( Switch| Merge)?( Big)? \(rgthree\)")

Kind = Literal["context", "switch", "merge"]


def is_context(node: dict[str, Any]) -> bool:
    """Whether ``node`` is one of rgthree's context nodes (a Dynamic Context too: its outputs are named by the
    user, and not followed)."""
    return _CONTEXT.fullmatch(str(node.get("class_type", ""))) is not None


def context_kind(node: dict[str, Any]) -> tuple[Kind, tuple[str, ...]] | None:
    """What a context node does with its inputs, and the fields on its outputs from output 1 on; None for any
    other node (and a Dynamic Context)."""
    match = _CONTEXT.fullmatch(str(node.get("class_type", "")))
    if match is None or match.group(1):
        return None
    kind: Kind = "switch" if match.group(2) == " Switch" else "merge" if match.group(2) == " Merge" else "context"
    return kind, BIG_FIELDS if match.group(3) else FIELDS


def field_at(fields: tuple[str, ...], slot: int) -> str | None:
    """The field a context's output ``slot`` gives; None for the context itself (0) or no such output."""
    return fields[slot - 1] if 0 < slot <= len(fields) else None


def contexts_in(inputs: dict[str, Any]) -> list[Any]:
    """A switch's or a merge's contexts, ``ctx_01``, ``ctx_02``… in order (the connected ones: an API graph holds
    no other)."""
    return [inputs[k] for k in sorted(inputs, key=lambda k: (len(k), k)) if re.fullmatch(r"ctx_\d{1,3}", k)
            and inputs[k] is not None]
