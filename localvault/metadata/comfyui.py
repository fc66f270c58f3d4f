"""ComfyUI: the API graph (``prompt`` chunk) and the UI graph (``workflow`` chunk).

The API graph maps node ids to ``{"class_type": …, "inputs": {…}}``; an input
that is ``[node_id, output_index]`` is a link to another node's output. The
sampler is found first, then its seed, prompts, model and size are traced
back along links (through LoRA loaders, ControlNets, guiders, primitives, switches…).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from ._clean import Found, find_run_id, json_loads, parse_seed
from .comfyui_links import GENERATOR_INPUTS, MAX_HOPS, is_link, reading, source, target, through
from .comfyui_links import resolve as _resolve
from .comfyui_samplers import find_sampler, sort_key, upstream
from .comfyui_workflow import Nodes, workflow_nodes

MAX_WORKFLOW_BYTES = 256 * 1024
_SEED_KEYS = ("seed", "noise_seed", "value", "int", "number", "seed_value")
# populated_text: Impact Pack's wildcard nodes (their wildcard_text is the template, not the prompt); source:
# core's PreviewAny, which passes on what it shows (a switch's pick, say)
_TEXT_KEYS = ("text", "text_g", "text_l", "prompt", "string", "value", "text_a", "populated_text", "source")
#: Keys of an encoder's one prompt (user_prompt: Lumina 2's; its system_prompt is a preset's name).
_NODE_TEXT_KEYS = ("text", "prompt", "populated_text", "user_prompt")
#: A size named by an aspect-ratio choice ("16:9 landscape 1344x768", Comfyroll's SDXL Aspect Ratio).
_RATIO_SIZE = re.compile(r"(\d{2,5}) ?x ?(\d{2,5})")
#: The sampler's settings, and what each is: a value of another kind is not the setting but a parameter of a node
#: making it as the graph runs (a math node's expression, ``ceil(a / b)``, for the steps).
_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "steps": (int, float), "cfg": (int, float), "sampler_name": (str,), "scheduler": (str,), "denoise": (int, float)}
_HELPER_INPUTS = ("sigmas", "sampler", "guider", "noise")
_MODEL_KEYS = ("ckpt_name", "unet_name")
#: A loader's ``model`` input holding a file name (kijai's WanVideoModelLoader and the like) names the model.
_MODEL_FILE_SUFFIXES = (".safetensors", ".gguf", ".ckpt", ".pt", ".pth", ".sft", ".bin")
#: Inputs that hold the image size: ComfyUI's latents, and loaders that make the latent (Efficiency Nodes).
_SIZE_KEYS = (("width", "height"), ("empty_latent_width", "empty_latent_height"))
#: Inputs holding one prompt for several text encoders (SDXL, SD3, Flux), the main one first.
_ENCODER_TEXT_KEYS = ("t5xxl", "llama", "text_g", "clip_g", "text_l", "clip_l")
#: Nodes whose output conditioning carries no text (Flux Kontext's negative is the positive, zeroed out).
_NO_TEXT_NODES = frozenset({"ConditioningZeroOut"})
#: Nodes one walk of a sampler's conditioning visits: a chain of thousands of joins (ConditioningConcat or
#: ConditioningCombine, each with its encoder) is real. Each node is visited once, in linear time.
MAX_WALK_NODES = 20_000


def api_nodes(data: Any) -> Nodes | None:
    """The nodes of an API graph, or None if ``data`` is not one."""
    if not isinstance(data, dict):
        return None
    nodes = {str(k): v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("inputs"), dict)}
    if not nodes or not any(isinstance(v.get("class_type"), str) for v in nodes.values()):
        return None
    return nodes


def _node_text(nodes: Nodes, inputs: dict[str, Any]) -> str | None:
    if any(k in inputs for k in _ENCODER_TEXT_KEYS):  # one prompt per text encoder: the distinct ones, main first
        parts = [_resolve(nodes, inputs.get(k), _TEXT_KEYS) for k in _ENCODER_TEXT_KEYS]
        texts = [p for p in parts if isinstance(p, str) and p.strip()]
        return "\n".join(dict.fromkeys(texts)) if texts else ""
    for key in _NODE_TEXT_KEYS:
        if key in inputs:
            text = _resolve(nodes, inputs[key], _TEXT_KEYS)
            return text if isinstance(text, str) else None
    return None


def _branch_text(nodes: Nodes, inputs: dict[str, Any], branch: str) -> str | None:
    """The text of a node that takes both prompts itself: ``positive``/``negative`` given as text (Efficiency
    Nodes' and tinyterra's loaders) or ``positive_prompt``/``negative_prompt`` (WanVideoWrapper's encoder)."""
    if isinstance(inputs.get(branch), str):
        return str(inputs[branch])
    text = _resolve(nodes, inputs.get(f"{branch}_prompt"), _TEXT_KEYS)
    return text if isinstance(text, str) else None


def _next_links(inputs: dict[str, Any], branch: str) -> list[Any]:
    if is_link(inputs.get(branch)):
        return [inputs[branch]]
    cond = [v for k, v in inputs.items() if "conditioning" in k and is_link(v)]
    return cond or [v for v in inputs.values() if is_link(v)]


def _walk(nodes: Nodes, starts: list[Any], branch: str, visit: Callable[[dict[str, Any]], bool]) -> None:
    """Depth first from the links ``starts``, each node once (:data:`MAX_WALK_NODES` at most), its inputs in their
    order, through switches along the input each picks: ``visit`` says whether to go on to the node's inputs
    (along ``branch``)."""
    stack, seen = list(reversed(starts)), set[str]()
    while stack and len(seen) < MAX_WALK_NODES:
        link = through(nodes, stack.pop())
        node = target(nodes, link)
        if node is None or str(link[0]) in seen:
            continue
        seen.add(str(link[0]))
        if visit(node):
            stack.extend(reversed(_next_links(node["inputs"], branch)))


def _trace_text(nodes: Nodes, starts: list[Any], branch: str) -> str | None:
    """The prompt text that reaches a sampler's ``positive``/``negative`` input (from the links ``starts``).

    Joined conditionings (``ConditioningConcat``, ``ConditioningCombine``) give their texts in the order the
    joined conditioning holds them.
    """
    texts: list[str] = []

    def visit(node: dict[str, Any]) -> bool:
        if node.get("class_type") in _NO_TEXT_NODES or not GENERATOR_INPUTS.isdisjoint(node["inputs"]):
            return False  # (a language model's text is made as the graph runs; its "prompt" is an instruction)
        text = _branch_text(nodes, node["inputs"], branch)  # (an encoder of both prompts: its ``prompt`` is the
        if text is None:  # positive one, as Qwen Image 2.1's ``prompt`` and ``negative_prompt``)
            text = _node_text(nodes, node["inputs"])
        if text is None:
            return True
        texts.append(text)
        return False

    _walk(nodes, starts, branch, visit)
    texts = [t for t in dict.fromkeys(texts) if t.strip()]
    return "\n".join(texts) if texts else None


def _guidance(nodes: Nodes, starts: list[Any]) -> int | float | None:
    """Flux's distilled guidance on the positive prompt's way to the sampler: a ``FluxGuidance`` node's, or that
    of an encoder taking it itself (``CLIPTextEncodeFlux``). Its ``cfg`` is 1 then: this is the number users set."""
    found: list[int | float] = []

    def visit(node: dict[str, Any]) -> bool:
        inputs = node["inputs"]
        value = _resolve(nodes, inputs["guidance"], ("value", "float", "number")) if "guidance" in inputs else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append(value)
        return not found and _node_text(nodes, inputs) is None  # (not past the encoder)

    _walk(nodes, starts, "positive", visit)
    return found[0] if found else None


def _helpers(nodes: Nodes, sampler: dict[str, Any]) -> list[dict[str, Any]]:
    """The sampler and the nodes giving it its settings: a custom sampler's noise, sampler, guider, and the
    scheduler its sigmas come from."""
    found = [sampler]
    for name in _HELPER_INPUTS:
        node = source(nodes, sampler["inputs"].get(name))
        if name == "sigmas":
            node = _scheduler(nodes, node)
        if node is not None:
            found.append(node)
    return found


def _scheduler(nodes: Nodes, node: dict[str, Any] | None) -> dict[str, Any] | None:
    """The node that made the sigmas ``node`` gives: past the nodes that split, flip or set them (the ``denoise``
    of SplitSigmasDenoise is the share of the steps it splits off, not the generation's)."""
    for _ in range(MAX_HOPS):
        before = source(nodes, node["inputs"].get("sigmas")) if node is not None else None
        if before is None:
            return node
        node = before
    return None


def _cond_start(nodes: Nodes, sampler: dict[str, Any], branch: str) -> list[Any]:
    """The links the sampler's ``branch`` prompt comes in by."""
    inputs = sampler["inputs"]
    if branch in inputs:
        return [inputs[branch]]
    for carrier in ("text_embeds", "basic_pipe"):  # one node holding both prompts (WanVideoWrapper's encoder,
        if carrier in inputs:  # Impact's ToBasicPipe): the branch is told apart there
            return [inputs[carrier]]
    guider = source(nodes, inputs.get("guider"))
    if guider is None:
        return []
    if branch in guider["inputs"]:
        return [guider["inputs"][branch]]
    # BasicGuider's one conditioning; DualCFGGuider's two (cond1, then cond2)
    return [guider["inputs"][k] for k in ("conditioning", "cond1", "cond2") if k in guider["inputs"]] \
        if branch == "positive" else []


def _first_with(nodes: Nodes, ids: Iterator[str] | list[str], keys: tuple[str, ...]) -> dict[str, Any] | None:
    for node_id in ids:
        inputs: dict[str, Any] = nodes[node_id]["inputs"]
        if any(isinstance(_resolve(nodes, inputs.get(k), _TEXT_KEYS), str) for k in keys):
            return inputs
    return None


def _model(nodes: Nodes, sampler_id: str | None) -> Any:
    ids = list(upstream(nodes, sampler_id)) if sampler_id else []
    inputs = _first_with(nodes, ids, _MODEL_KEYS) or _first_with(nodes, sorted(nodes, key=sort_key), _MODEL_KEYS)
    if inputs is None:  # a loader upstream of the sampler whose ``model`` names a file (not any node's: a
        # segmentation or depth model after the sampler is not the one that generated)
        return next((m for m in (nodes[i]["inputs"].get("model") for i in ids)
                     if isinstance(m, str) and m.lower().endswith(_MODEL_FILE_SUFFIXES)), None)
    return next(_resolve(nodes, inputs[k], _TEXT_KEYS) for k in _MODEL_KEYS if k in inputs)


def _size(nodes: Nodes, sampler_id: str | None) -> dict[str, Any]:
    """The image size: from the latent the sampler starts from, else the nearest node upstream with one.

    Text encoders are passed over: SDXL's take a conditioning ``width`` and
    ``height`` (often 4096) that is not the image's.
    """
    ids: list[str] = []
    if sampler_id:
        latent = through(nodes, nodes[sampler_id]["inputs"].get("latent_image"))
        if target(nodes, latent) is not None:
            ids += [str(latent[0]), *upstream(nodes, str(latent[0]))]
        ids += upstream(nodes, sampler_id)
    ids += [k for k in sorted(nodes, key=sort_key) if "latent" in str(nodes[k].get("class_type", "")).lower()]
    for node_id in dict.fromkeys(ids):  # each node once, nearest the latent first
        if "textencode" in str(nodes[node_id].get("class_type", "")).lower():
            continue
        inputs = nodes[node_id]["inputs"]
        ratio = inputs.get("aspect_ratio")
        named = _RATIO_SIZE.search(ratio) if isinstance(ratio, str) and ratio != "custom" else None
        if named is not None:  # its width and height inputs are used for "custom" only
            width, height = int(named.group(1)), int(named.group(2))
            swapped = inputs.get("swap_dimensions") in ("On", True)
            return {"width": height, "height": width} if swapped else {"width": width, "height": height}
        for keys in _SIZE_KEYS:
            width, height = (_resolve(nodes, inputs.get(k), ("value", "int")) for k in keys)
            if isinstance(width, int) and isinstance(height, int):
                return {"width": width, "height": height}
    return {}


def _sampler_fields(nodes: Nodes, found: Found, sampler_id: str) -> None:
    sampler = nodes[sampler_id]
    helpers = _helpers(nodes, sampler)
    for node in helpers:
        inputs = node["inputs"]
        if found.seed is None:
            key = next((k for k in ("seed", "noise_seed") if k in inputs), None)
            found.seed = _resolve(nodes, inputs[key], _SEED_KEYS) if key else None
        for key, kinds in _PARAM_TYPES.items():
            if key in inputs and key not in found.settings:
                value = _resolve(nodes, inputs[key], (key, "value"))
                if isinstance(value, kinds) and not isinstance(value, bool):  # (else a helper further on may tell it)
                    found.settings[key] = value
    found.prompt = _trace_text(nodes, _cond_start(nodes, sampler, "positive"), "positive")
    if (guidance := _guidance(nodes, _cond_start(nodes, sampler, "positive"))) is not None:
        found.settings["guidance"] = guidance
    found.negative_prompt = _trace_text(nodes, _cond_start(nodes, sampler, "negative"), "negative")
    if found.negative_prompt is not None:
        found.settings["negative_prompt"] = found.negative_prompt
    if found.seed is not None and parse_seed(found.seed) is None:
        found.settings["seed"] = found.seed


def _loras(inputs: dict[str, Any]) -> list[str]:
    """The LoRAs a node loads: its ``lora_name`` (a pysssss combo's ``content`` too), or the ones switched on in
    rgthree's Power Lora Loader (``lora_1: {"on", "lora", "strength"}``…)."""
    name = _resolve({}, inputs.get("lora_name"), ())
    found = [name] if isinstance(name, str) and name != "None" else []
    found += [v["lora"] for k, v in inputs.items() if k.startswith("lora_") and isinstance(v, dict)
              and v.get("on") and isinstance(v.get("lora"), str) and v["lora"] != "None"]
    return found


def from_nodes(nodes: Nodes, file_name: str | None = None) -> Found:
    """Prompt, seed, model and settings from the nodes of an API graph (of the branch that saved ``file_name``)."""
    with reading():
        return _from_nodes(nodes, file_name)


def _from_nodes(nodes: Nodes, file_name: str | None) -> Found:
    found = Found(source="comfyui")
    sampler_id = find_sampler(nodes, file_name)
    if sampler_id is not None:
        _sampler_fields(nodes, found, sampler_id)
    found.model = _model(nodes, sampler_id)
    found.settings.update(_size(nodes, sampler_id))
    loras = [lora for node in nodes.values() for lora in _loras(node["inputs"])]
    if loras:
        found.settings["loras"] = loras
    return found


def _json_size(value: Any) -> int:
    try:
        return len(json.dumps(value, default=str).encode())
    except (ValueError, RecursionError):
        return MAX_WORKFLOW_BYTES + 1


def _by_shape(graph: Any, flow: Any) -> tuple[Any, Nodes | None, Any]:
    """The API graph, its nodes (None if neither chunk holds one) and the UI graph of the ``prompt`` and
    ``workflow`` chunks, told apart by their shape (a custom save node may write the UI graph under ``prompt``
    and the API graph under ``workflow``)."""
    def is_ui(value: Any) -> bool:
        return isinstance(value, dict) and isinstance(value.get("nodes"), list)

    nodes = api_nodes(graph)
    if nodes is None and (swapped := api_nodes(flow)) is not None:
        return flow, swapped, graph
    if nodes is None and is_ui(graph) and not is_ui(flow):
        return flow, None, graph
    return graph, nodes, flow


def parse(prompt: Any, workflow: Any = None, extra: dict[str, Any] | None = None,
          file_name: str | None = None) -> Found:
    """Read the ``prompt`` (API graph) and ``workflow`` (UI graph) chunks, whichever holds which; either may be JSON
    text. ``file_name``: the file's, which tells which branch of a graph saved it."""
    graph, nodes, flow = _by_shape(prompt if isinstance(prompt, dict) else json_loads(prompt),
                                   workflow if isinstance(workflow, dict) else json_loads(workflow))
    found = from_nodes(nodes, file_name) if nodes else Found()
    if nodes is None and (ui_nodes := workflow_nodes(flow)) is not None:
        found = from_nodes(ui_nodes, file_name)
    if nodes is not None:
        found.settings["comfyui_prompt"] = graph
    if isinstance(flow, dict):
        found.source = "comfyui"
        if (size := _json_size(flow)) <= MAX_WORKFLOW_BYTES:
            found.settings["comfyui_workflow"] = flow
        else:  # (not kept: said, with its size; a file holding nothing else came in as "none")
            found.settings["comfyui_workflow_not_kept_bytes"] = size
    extras = flow.get("extra") if isinstance(flow, dict) else None
    found.run_id = find_run_id(extra, graph, flow, extras)
    return found
