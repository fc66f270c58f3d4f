"""Following links in a ComfyUI API graph to the plain values they lead to, within one budget per graph.

An input that is ``[node_id, output_index]`` links to another node's output;
:func:`resolve` follows such links through primitive, seed and string nodes, and
joins the parts of string-joining nodes, and passes through switch nodes
along the input they pick (:func:`through`), and through rgthree's contexts
to the link that set each field (:mod:`.comfyui_contexts`). Everything one graph's reading
resolves is shared (:func:`reading`): a node that thousands of others link to
is followed once, and the whole reading takes at most :data:`MAX_GRAPH_STEPS`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from localvault.models import MAX_PROMPT_CHARS

from .comfyui_contexts import Kind, context_kind, contexts_in, field_at
from .comfyui_workflow import Nodes

MAX_HOPS = 64
#: String-joining nodes nested deeper than this (or more of them in one graph) are not followed: a crafted
#: graph must not stall an import.
MAX_JOIN_DEPTH = 64
MAX_JOINS = 1000
#: Links followed and inputs looked through in one graph's reading, in all: a graph that made one node be
#: resolved again for each of thousands of others (or each part of a join walk a long chain) took hours.
MAX_GRAPH_STEPS = 200_000
#: A node giving two texts on two outputs (SDXL Prompt Styler): the key of each output slot's.
SLOT_TEXT_KEYS = ("text_positive", "text_negative")
#: Inputs only a language model's node has (Ollama, Florence-2, JoyCaption, API chat nodes): the text it gives is
#: generated when the graph runs, and not in the graph; its ``prompt`` is the instruction it was given.
GENERATOR_INPUTS = frozenset({"temperature", "max_tokens", "max_new_tokens", "top_p", "keep_alive", "url", "api_key"})
#: What a switch's boolean may be given as (a primitive's value, or text from an untyped widget).
_BOOLEAN_KEYS = ("value", "boolean")
_BOOLEAN_TEXT = {"true": True, "false": False}
#: rgthree's Any Switch: its inputs any_01, any_02…
_ANY_INPUT = re.compile(r"any_(\d{1,4})")


def is_link(value: Any) -> bool:
    """True for ``[node_id, output_index]``."""
    return (
        isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
        and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool)
    )


def target(nodes: Nodes, link: Any) -> dict[str, Any] | None:
    """The node ``link`` leads to; None for no link, or a link to no node."""
    return nodes.get(str(link[0])) if is_link(link) else None


def source(nodes: Nodes, value: Any) -> dict[str, Any] | None:
    """The node that gives what ``value`` links to, through switches and contexts (:func:`through`); None for no
    link, or one to no node."""
    return target(nodes, through(nodes, value))


class _Reading:
    """What one graph's reading has resolved: each link from the top once, each join once per set of keys,
    none inside itself (a cycle), and at most MAX_GRAPH_STEPS steps in all."""

    def __init__(self) -> None:
        self.resolved: dict[tuple[int, str, int, tuple[str, ...]], Any] = {}
        self.joined: dict[tuple[str, tuple[str, ...]], str | None] = {}
        self.switched: dict[tuple[int, str, int], tuple[bool, Any]] = {}
        self.fields: dict[tuple[int, str, str], Any] = {}
        self.active: set[str] = set()
        self.steps_left = MAX_GRAPH_STEPS

    def enter(self, node_id: str) -> bool:
        """Mark ``node_id`` as being looked through; False if it already is (a cycle), or too many are."""
        if node_id in self.active or len(self.active) >= MAX_JOIN_DEPTH:
            return False
        self.active.add(node_id)
        return True

    def spend(self, steps: int) -> bool:
        """Take ``steps`` from the budget; False once it is spent."""
        self.steps_left -= steps
        return self.steps_left >= 0


_CURRENT: ContextVar[_Reading | None] = ContextVar("localvault_comfyui_reading", default=None)


@contextmanager
def reading() -> Iterator[None]:
    """One graph's reading: the resolutions made inside share what they found, and one budget."""
    token = _CURRENT.set(_Reading())
    try:
        yield
    finally:
        _CURRENT.reset(token)


def resolve(nodes: Nodes, value: Any, keys: tuple[str, ...]) -> Any:
    """Follow links from ``value`` to a plain value, through primitive/seed/string nodes; None where there is
    none, or once the graph's budget is spent.

    A string-joining node (``StringConcatenate``, WAS ``Text Concatenate``)
    gives its parts joined by its ``delimiter``.
    """
    state = _CURRENT.get() or _Reading()
    if not is_link(value) or state.active:  # (inside a join, a cycle may cut a result: not kept for others)
        return _follow(nodes, value, keys, state)
    key = (id(nodes), str(value[0]), value[1], keys)
    if key not in state.resolved:
        state.resolved[key] = _follow(nodes, value, keys, state)
    return state.resolved[key]


def _follow(nodes: Nodes, value: Any, keys: tuple[str, ...], state: _Reading) -> Any:
    for _ in range(MAX_HOPS):
        if isinstance(value, dict) and isinstance(value.get("content"), str):  # a pysssss combo: {"content": name}
            return value["content"]
        if not is_link(value):
            return value
        node = target(nodes, value)
        if node is None or not state.spend(1):
            return None
        inputs = node["inputs"]
        if not GENERATOR_INPUTS.isdisjoint(inputs):  # a text written by a model as the graph ran: not known here
            return None
        is_switch, picked = _switched(nodes, value, node, state)
        if is_switch:
            value = picked
            continue
        if "concat" in str(node.get("class_type", "")).lower():
            return _joined(nodes, str(value[0]), inputs, keys, state)
        if value[1] < len(SLOT_TEXT_KEYS) and SLOT_TEXT_KEYS[value[1]] in inputs:
            value = inputs[SLOT_TEXT_KEYS[value[1]]]
            continue
        key = next((k for k in keys if k in inputs), None)
        if key is None:
            if not state.spend(len(inputs)):
                return None
            plain = [v for v in inputs.values() if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
            return plain[0] if len(plain) == 1 else None
        value = inputs[key]
    return None


def _joined(nodes: Nodes, node_id: str, inputs: dict[str, Any], keys: tuple[str, ...], state: _Reading) -> str | None:
    """The text a string-joining node makes: its ``string_*``/``text_*`` inputs in order, joined by ``delimiter``."""
    done = (node_id, keys)
    if done in state.joined:
        return state.joined[done]
    if len(state.joined) >= MAX_JOINS or not state.enter(node_id):
        return None
    names = sorted(k for k in inputs if k.startswith(("string_", "text_")))
    parts = [_follow(nodes, inputs[k], keys, state) for k in names]
    state.active.discard(node_id)
    texts = [p for p in parts if isinstance(p, str) and p != ""]
    delimiter = inputs.get("delimiter")
    # Cut to what a prompt may hold: nested joins of joins would otherwise grow it exponentially.
    joined = (delimiter if isinstance(delimiter, str) else "").join(texts)[:MAX_PROMPT_CHARS] if texts else None
    state.joined[done] = joined
    return joined


def through(nodes: Nodes, value: Any) -> Any:
    """``value`` followed through switch nodes and rgthree's contexts: the link to the output a chain of them passes
    on (``value`` itself when it leads to none), or a plain value, or None where a switch's choice (or a context's
    field) is not known."""
    state = _CURRENT.get() or _Reading()
    for _ in range(MAX_HOPS):
        # (a look at the node, as the walks calling this take anyway: only a switch's choice spends the budget)
        node = nodes.get(str(value[0])) if is_link(value) else None
        if node is None:
            return value
        is_switch, picked = _switched(nodes, value, node, state)
        if not is_switch:
            return value
        value = picked
    return None


def _switched(nodes: Nodes, link: Any, node: dict[str, Any], state: _Reading) -> tuple[bool, Any]:
    """Whether the output ``link`` leads to passes on something the node was given, and if so what: a switch's
    pick (:func:`_choice`), or a field of one of rgthree's contexts (:func:`_context_output`). Each is found once
    per graph, the node's inputs looked through within the budget."""
    context = context_kind(node)
    if context is None and "switch" not in str(node.get("class_type", "")).lower():
        return False, None
    if context is not None and context[0] != "switch" and link[1] == 0:
        return False, None  # (the context itself: its fields are read from the outputs that give them)
    node_id = str(link[0])
    key = (id(nodes), node_id, link[1])
    if key in state.switched:
        return state.switched[key]
    if not state.spend(1 + len(node["inputs"])) or not state.enter(node_id):
        return True, None  # (a switch its own boolean depends on, or a crafted chain of them)
    cached = len(state.active) == 1  # (inside a join or a switch, a cycle may cut a result: not kept for others)
    found = _choice(nodes, node["inputs"], state) if context is None else \
        (True, _context_output(nodes, node["inputs"], *context, link[1], state))
    state.active.discard(node_id)
    if cached:
        state.switched[key] = found
    return found


def _context_output(nodes: Nodes, inputs: dict[str, Any], kind: Kind, fields: tuple[str, ...], slot: int,
                    state: _Reading) -> Any:
    """What an output of a context node gives (the link or value it was given): a Context Switch's output 0 its
    first context, any other output the field it is for (None if no context on the way sets it)."""
    name = field_at(fields, slot)
    if kind == "switch":
        picked = next(iter(contexts_in(inputs)), None)
        return picked if slot == 0 else _field(nodes, picked, name, state) if name else None
    if name is None:
        return None
    return _merged(nodes, inputs, name, state) if kind == "merge" else _own_field(nodes, inputs, name, state)


def _own_field(nodes: Nodes, inputs: dict[str, Any], name: str, state: _Reading) -> Any:
    """A Context's field ``name``: its own input, else its base context's."""
    return inputs[name] if inputs.get(name) is not None else _field(nodes, inputs.get("base_ctx"), name, state)


def _merged(nodes: Nodes, inputs: dict[str, Any], name: str, state: _Reading) -> Any:
    """A Context Merge's field ``name``: that of the last of its contexts that has it."""
    found = (_field(nodes, ctx, name, state) for ctx in reversed(contexts_in(inputs)))
    return next((value for value in found if value is not None), None)


def _field(nodes: Nodes, link: Any, name: str, state: _Reading) -> Any:
    """The field ``name`` of the context ``link`` gives, down a chain of contexts (each set what it is given, and
    keeps its base context's others) through switches, :data:`MAX_HOPS` contexts at most; None if none sets it."""
    for _ in range(MAX_HOPS):
        link = through(nodes, link)
        node = target(nodes, link)
        context = context_kind(node) if node is not None and link[1] == 0 else None
        if node is None or context is None or not state.spend(1):
            return None
        if context[0] == "merge":  # (merges of merges, each of several before it: each field found once)
            key = (id(nodes), str(link[0]), name)
            if key not in state.fields:
                if not state.enter(key[1]):
                    return None
                state.fields[key] = _merged(nodes, node["inputs"], name, state)
                state.active.discard(key[1])
            return state.fields[key]
        if node["inputs"].get(name) is not None:
            return node["inputs"][name]
        link = node["inputs"].get("base_ctx")
    return None


def _choice(nodes: Nodes, inputs: dict[str, Any], state: _Reading) -> tuple[bool, Any]:
    """Whether a node named a switch has a switch's inputs, and if so what it passes on: one of its inputs (a link
    or a value), or None when that is not known.

    Core's ``ComfySwitchNode`` passes ``on_true`` if its ``switch`` is true, else ``on_false``; WAS's switches
    (``Text Input Switch``…) ``<name>_a`` if their ``boolean`` is true, else ``<name>_b``; rgthree's
    ``Any Switch`` the first of its ``any_01``… inputs that is connected (rgthree's rule: the first not None). A
    switch whose boolean is made as the graph runs (a comparison of texts, say) passes on nothing: either input
    may be the wrong one, and a wrong prompt is worse than none (the other parts of a join around it are kept).
    """
    if "on_true" in inputs or "on_false" in inputs:
        choices, flag = ("on_true", "on_false"), "switch"
    elif (name := next((k[:-2] for k in inputs if k.endswith(("_a", "_b"))), None)) is not None and "boolean" in inputs:
        choices, flag = (f"{name}_a", f"{name}_b"), "boolean"
    else:
        listed = sorted((int(m.group(1)), k) for k in inputs if (m := _ANY_INPUT.fullmatch(k)))
        return bool(listed), next((inputs[k] for _, k in listed if inputs[k] is not None), None)
    on = _follow(nodes, inputs.get(flag), _BOOLEAN_KEYS, state)
    if isinstance(on, str):
        on = _BOOLEAN_TEXT.get(on.strip().lower())
    return True, inputs.get(choices[0] if on else choices[1]) if isinstance(on, bool) else None
