"""ComfyUI's UI graph (the ``workflow`` chunk) as an approximate API graph, for a file that carries no other.

The UI graph lists nodes with their widgets' values in the order the node
shows them, and links as ``[id, from node, from slot, to node, to slot, type]``;
the widget order of common nodes (:data:`_WIDGETS`) names the values.
"""

from __future__ import annotations

from typing import Any

#: An API graph: node id -> {"class_type": …, "inputs": {…}}.
Nodes = dict[str, dict[str, Any]]

#: Widget order of common nodes in the UI graph, to read a workflow without an API graph.
_WIDGETS = {
    "KSampler": ("seed", None, "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("add_noise", "noise_seed", None, "steps", "cfg", "sampler_name", "scheduler"),
    "CLIPTextEncode": ("text",),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "UNETLoader": ("unet_name",),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    # A widget turned into an input and fed by a primitive: the primitive holds the value.
    "PrimitiveNode": ("value",),
    "PrimitiveInt": ("value",),
    "PrimitiveString": ("value",),
    "PrimitiveStringMultiline": ("value",),
}


def workflow_nodes(workflow: Any) -> Nodes | None:
    """An approximate API graph built from a UI workflow's nodes, links and widget values."""
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        return None
    sources: dict[Any, list[Any]] = {}
    for link in workflow.get("links") or []:
        if isinstance(link, list) and len(link) >= 4 and isinstance(link[2], int):
            sources[str(link[0])] = [str(link[1]), link[2]]
    nodes: Nodes = {}
    for node in workflow["nodes"]:
        if not isinstance(node, dict) or not isinstance(node.get("type"), str):
            continue
        inputs: dict[str, Any] = {}
        widgets = node.get("widgets_values")
        values = widgets if isinstance(widgets, list) else []
        for name, value in zip(_WIDGETS.get(node["type"], ()), values, strict=False):  # a graph may have more or fewer
            if name is not None:
                inputs[name] = value
        for slot in node.get("inputs") or []:
            if isinstance(slot, dict) and isinstance(slot.get("name"), str) and str(slot.get("link")) in sources:
                inputs[slot["name"]] = sources[str(slot["link"])]
        nodes[str(node.get("id"))] = {"class_type": node["type"], "inputs": inputs}
    return nodes or None
