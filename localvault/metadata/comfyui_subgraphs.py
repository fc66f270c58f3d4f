"""The graphs of a ComfyUI UI workflow, its subgraphs' included, and where a link across their boundaries leads.

The frontend writes each subgraph once, in the workflow's
``definitions.subgraphs``, with nodes and links of its own; a node whose
``type`` is a subgraph's id places it in a graph. Inside, links from the
subgraph's inputs start at node -10 (``origin_slot``: which input) and links
to its outputs end at node -20. Links in a subgraph are objects
(``{"id", "origin_id", "origin_slot", "target_id", "target_slot"}``), the top
graph's lists. A value set on the subgraph's node for a widget it exposes
(a promoted widget) is in that node's ``widgets_values``, one per such input.

Each placement is a :class:`Scope`; :func:`origin` follows a link through the
boundaries to the real node's output, or to the value the subgraph's node was
given. A crafted file must not stall a reading: nesting, the nodes, slots and links
taken in, and the hops across boundaries are bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: An API graph: node id -> {"class_type": …, "inputs": {…}}.
Nodes = dict[str, dict[str, Any]]

#: The ids the frontend gives a subgraph's input and output boundary in its links.
_INPUT_ID, _OUTPUT_ID = "-10", "-20"
#: Subgraphs nested deeper than this are not opened (real ones nest two or three deep).
MAX_DEPTH = 8
#: Nodes, input slots and links taken in from every placement of every subgraph: one placed many times in one
#: placed many times would otherwise grow exponentially.
MAX_ITEMS = 20_000
#: Boundaries one link is followed across; and hops in all, for one workflow.
MAX_HOPS = 64
MAX_STEPS = 200_000
#: A node's ``mode`` when muted (it runs not, and gives nothing) and bypassed (it passes an input on, by type).
MUTED, BYPASSED = 2, 4
#: What a seed widget's companion ("control after generate") holds: older frontends wrote it among a subgraph
#: node's values, after the seed's.
_CONTROL_MODES = frozenset({"fixed", "increment", "decrement", "randomize"})


@dataclass
class Scope:
    """One graph: the top one, or one placement of a subgraph (its node's ids prefixed ``"<node id>:"``)."""

    prefix: str
    nodes: list[dict[str, Any]]
    #: link id -> (origin node id, origin slot)
    links: dict[str, tuple[str, int]]
    #: a subgraph's output slot -> the inner (origin node id, origin slot) that feeds it
    outputs: dict[int, tuple[str, int]] = field(default_factory=dict)
    definition: dict[str, Any] | None = None
    #: the node that placed this subgraph, in ``parent``
    instance: dict[str, Any] | None = None
    parent: Scope | None = None
    depth: int = 0
    #: node id -> the scope of the subgraph it places
    children: dict[str, Scope] = field(default_factory=dict)
    #: a subgraph's input slot -> the link into its node's input, in ``parent``
    feeds: dict[int, str] = field(default_factory=dict)
    #: a subgraph's input slot -> the value its node's promoted widget holds
    given: dict[int, Any] = field(default_factory=dict)
    #: node id -> node, of ``nodes``
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: hops left for the whole workflow (shared by its scopes)
    budget: list[int] = field(default_factory=lambda: [MAX_STEPS])


def scopes(workflow: dict[str, Any]) -> list[Scope]:
    """The workflow's top graph, then each placement of a subgraph in it (nested ones too), within the bounds."""
    definitions = _definitions(workflow)
    sizes = {key: _size(definition) for key, definition in definitions.items()}
    root = _scope(workflow, "", None, None, None)
    found, pending, items = [root], [root], 0
    while pending:
        scope = pending.pop()
        for node in scope.nodes:
            definition = definitions.get(node["type"])
            if definition is None or scope.depth >= MAX_DEPTH or items + sizes[node["type"]] > MAX_ITEMS \
                    or _on_path(scope, definition) or node.get("mode") in (MUTED, BYPASSED):
                continue
            items += sizes[node["type"]]
            child = _scope(definition, f"{scope.prefix}{node.get('id')}:", scope, node, definition)
            scope.children[str(node.get("id"))] = child
            found.append(child)
            pending.append(child)
    return found


def origin(scope: Scope, link_id: str, kind: Any = None) -> Any:
    """What feeds the input (of type ``kind``) joined by link ``link_id`` in ``scope``: ``[node id, slot]`` of a
    real node's output (through subgraph boundaries, either way, and bypassed nodes), the value given on a
    subgraph's node, or None (a muted node's output: it gives nothing)."""
    source = scope.links.get(link_id)
    for _ in range(MAX_HOPS):
        scope.budget[0] -= 1
        if source is None or scope.budget[0] < 0:
            return None
        node_id, slot = source
        if node_id == _INPUT_ID:  # into a subgraph from its node's input, in the graph around it
            link = scope.feeds.get(slot)
            if link is None or scope.parent is None:
                return scope.given.get(slot)
            scope = scope.parent
            source = scope.links.get(link)
        elif (mode := scope.by_id.get(node_id, {}).get("mode")) in (MUTED, BYPASSED):
            link = _bypassed(scope.by_id[node_id], slot, kind) if mode == BYPASSED else None
            source = scope.links.get(link) if link is not None else None
        elif node_id in scope.children:  # out of a subgraph, from what feeds its output inside
            scope = scope.children[node_id]
            source = scope.outputs.get(slot)
        else:
            return [scope.prefix + node_id, slot]
    return None


def _bypassed(node: dict[str, Any], slot: int, kind: Any) -> str | None:
    """The link into the input a bypassed node passes its output ``slot`` on from, to an input of type ``kind``:
    its input at the same slot if of that type, else its first of that type (as the frontend sends the graph)."""
    inputs = slots(node)
    order = ([inputs[slot]] if 0 <= slot < len(inputs) else []) + inputs
    match = next((s for s in order if kind is not None and s.get("type") == kind), None)
    return str(match["link"]) if match is not None and match.get("link") is not None else None


def _definitions(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Subgraph definitions by id (the frontend writes all of them, nested ones too, in the top graph's)."""
    held = workflow.get("definitions")
    listed = held.get("subgraphs") if isinstance(held, dict) else None
    return {d["id"]: d for d in listed or () if isinstance(d, dict) and isinstance(d.get("id"), str)
            and isinstance(d.get("nodes"), list)} if isinstance(listed, list) else {}


def _size(definition: dict[str, Any]) -> int:
    """What opening a subgraph once takes in: itself, its nodes, their input slots, its links, and its own inputs
    and outputs (each placement walks them: an empty definition of many inputs, placed many times, cost their
    product; a review)."""
    # Every entry counts, objects or not: each placement walks them all before it keeps the objects (a review).
    nodes = definition["nodes"]
    node_inputs = (n.get("inputs") for n in nodes if isinstance(n, dict))
    listed = (definition.get(key) for key in ("links", "inputs", "outputs"))
    return 1 + len(nodes) + sum(len(each) for each in node_inputs if isinstance(each, list)) + sum(
        len(each) for each in listed if isinstance(each, (list, dict)))


def _on_path(scope: Scope | None, definition: dict[str, Any]) -> bool:
    """Whether ``definition`` is already open around ``scope`` (a subgraph placed inside itself)."""
    while scope is not None:
        if scope.definition is definition:
            return True
        scope = scope.parent
    return False


def _scope(graph: dict[str, Any], prefix: str, parent: Scope | None, instance: dict[str, Any] | None,
           definition: dict[str, Any] | None) -> Scope:
    nodes = [n for n in graph.get("nodes") or () if isinstance(n, dict) and isinstance(n.get("type"), str)]
    links: dict[str, tuple[str, int]] = {}
    outputs: dict[int, tuple[str, int]] = {}
    raw = graph.get("links")
    for entry in (raw.values() if isinstance(raw, dict) else raw) if isinstance(raw, (dict, list)) else ():
        link = _link(entry)
        if link is not None:
            links[link[0]] = (link[1], link[2])
            if link[3] == _OUTPUT_ID and isinstance(link[4], int):
                outputs[link[4]] = (link[1], link[2])
    scope = Scope(prefix, nodes, links, outputs, definition, instance, parent,
                  parent.depth + 1 if parent else 0, by_id={str(n.get("id")): n for n in nodes})
    if parent is not None:
        scope.budget = parent.budget
        scope.feeds, scope.given = _feeds(scope), _given(scope)
    return scope


def _link(entry: Any) -> tuple[str, str, int, str, Any] | None:
    """(id, origin node, origin slot, target node, target slot) of a link, a list's or an object's."""
    fields: list[Any]
    if isinstance(entry, list) and len(entry) >= 4:
        fields = [*entry[:5], None]
    elif isinstance(entry, dict):
        fields = [entry.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot")]
    else:
        return None
    if not isinstance(fields[2], int) or isinstance(fields[2], bool):
        return None
    return str(fields[0]), str(fields[1]), fields[2], str(fields[3]), fields[4]


def slots(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A UI node's input slots (those that are objects)."""
    listed = node.get("inputs")
    return [s for s in listed if isinstance(s, dict)] if isinstance(listed, list) else []


def _inputs(scope: Scope) -> list[Any]:
    listed = scope.definition.get("inputs") if scope.definition else None
    return listed if isinstance(listed, list) else []


def _feeds(scope: Scope) -> dict[int, str]:
    """By input slot of ``scope``'s subgraph, the link into it in the graph around: into the input of the same
    name of the node that placed it (as the frontend matches them: older ones left promoted inputs out of it)."""
    links = {each["name"]: str(each["link"]) for each in slots(scope.instance or {})
             if isinstance(each.get("name"), str) and each.get("link") is not None}
    names = [each.get("name") if isinstance(each, dict) else None for each in _inputs(scope)]
    return {slot: links[name] for slot, name in enumerate(names) if isinstance(name, str) and name in links}


def _given(scope: Scope) -> dict[int, Any]:
    """The subgraph node's values for its promoted widgets, by input slot: one value for each input that leads to
    a widget inside, in the inputs' order (an older frontend wrote a seed's "control after generate" after it)."""
    widget_links = {str(s["link"]) for n in scope.nodes for s in slots(n)
                    if isinstance(s.get("widget"), dict) and s.get("link") is not None}
    count = len(_inputs(scope))
    promoted = sorted({slot for link, (node, slot) in scope.links.items()
                       if node == _INPUT_ID and link in widget_links and 0 <= slot < count})
    values = scope.instance.get("widgets_values") if scope.instance else None
    if not isinstance(values, list):
        return {}
    extra, given, index = len(values) > len(promoted), {}, 0
    for slot in promoted:
        if index >= len(values):
            break
        if values[index] is not None:
            given[slot] = values[index]
        index += 1
        if extra and index < len(values) and isinstance(values[index], str) and values[index] in _CONTROL_MODES:
            index += 1
    return given
