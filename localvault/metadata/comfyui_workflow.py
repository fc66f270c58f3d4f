"""ComfyUI's UI graph (the ``workflow`` chunk) as an approximate API graph, for a file that carries no other.

The UI graph lists nodes with their widgets' values in the order the node
shows them, and links as ``[id, from node, from slot, to node, to slot, type]``;
the widget order of common nodes (:data:`_WIDGETS`) names the values.

Subgraphs (the frontend's ``definitions.subgraphs``: each with nodes and links
of its own, placed in a graph by a node whose ``type`` is its id) are flattened
as ComfyUI flattens them to run the graph (:mod:`.comfyui_subgraphs`).
"""

from __future__ import annotations

from typing import Any

from .comfyui_subgraphs import BYPASSED, MUTED, Nodes, Scope, origin, scopes, slots

__all__ = ["Nodes", "workflow_nodes"]

#: Widget order of common nodes in the UI graph, to read a workflow without an API graph.
_WIDGETS = {
    "KSampler": ("seed", None, "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("add_noise", "noise_seed", None, "steps", "cfg", "sampler_name", "scheduler"),
    # The custom samplers' (comfy_extras/nodes_custom_sampler.py): a seed widget is followed by its
    # "control after generate" (None here).
    "SamplerCustom": ("add_noise", "noise_seed", None, "cfg"),
    "RandomNoise": ("noise_seed", None),
    "KSamplerSelect": ("sampler_name",),
    "BasicScheduler": ("scheduler", "steps", "denoise"),
    "CLIPTextEncode": ("text",),
    "CLIPTextEncodeFlux": ("clip_l", "t5xxl", "guidance"),
    "TextEncodeQwenImageEdit": ("prompt",),
    "TextEncodeQwenImageEditPlus": ("prompt",),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "UNETLoader": ("unet_name",),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "EmptySD3LatentImage": ("width", "height", "batch_size"),
    # A widget turned into an input and fed by a primitive: the primitive holds the value.
    "PrimitiveNode": ("value",),
    "PrimitiveInt": ("value",),
    "PrimitiveString": ("value",),
    "PrimitiveStringMultiline": ("value",),
    "PrimitiveFloat": ("value",),
    "PrimitiveBoolean": ("value",),
    # Core's switch: its ``switch`` widget picks ``on_true`` or ``on_false`` (see comfyui_links).
    "ComfySwitchNode": ("switch",),
}


def workflow_nodes(workflow: Any) -> Nodes | None:
    """An approximate API graph built from a UI workflow's nodes, links and widget values, its subgraphs
    flattened (an inner node's id is the path of subgraph nodes to it, ``"12:5"``, as in ComfyUI's API graph)."""
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        return None
    nodes: Nodes = {}
    for scope in scopes(workflow):
        for node in scope.nodes:
            node_id = str(node.get("id"))
            # (a subgraph's node: its inner nodes stand for it; a muted or bypassed node runs not)
            if node_id not in scope.children and node.get("mode") not in (MUTED, BYPASSED):
                nodes[scope.prefix + node_id] = _api_node(scope, node)
    return nodes or None


def _api_node(scope: Scope, node: dict[str, Any]) -> dict[str, Any]:
    """One UI node as an API node: its widgets' values by name, then its linked inputs (a link that leads to
    nothing known leaves the widget's value)."""
    inputs: dict[str, Any] = {}
    widgets = node.get("widgets_values")
    values = widgets if isinstance(widgets, list) else []
    for name, value in zip(_WIDGETS.get(node["type"], ()), values, strict=False):  # a graph may have more or fewer
        if name is not None:
            inputs[name] = value
    for slot in slots(node):
        if isinstance(slot.get("name"), str) and slot.get("link") is not None:
            value = origin(scope, str(slot["link"]), slot.get("type"))
            if value is not None:
                inputs[slot["name"]] = value
    return {"class_type": node["type"], "inputs": inputs}
