"""The public API is documented: every public class, function, method and property has a docstring, and the API
reference (docs/api.md) names each of them with its parameters."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import localvault
import localvault.metadata
import localvault.sync
from localvault.collections import Collections
from localvault.library import Library
from localvault.watch import Watcher, WatchEvent, WatchReport
from localvault.workspace import Workspace

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "api.md"
#: Objects whose public methods and properties make the API (besides the functions and classes exported).
WITH_MEMBERS = (localvault.Vault, Workspace, Library, Collections, Watcher, localvault.sync.Remote)


def _exported() -> Iterator[tuple[str, Any]]:
    for module in (localvault, localvault.sync, localvault.metadata):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) or inspect.isfunction(value):
                yield f"{module.__name__}.{name}", value
    yield "localvault.watch.WatchEvent", WatchEvent
    yield "localvault.watch.WatchReport", WatchReport


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (classmethod, staticmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            yield name, value


def _public() -> Iterator[tuple[str, Any]]:
    yield from _exported()
    for cls in WITH_MEMBERS:
        for name, value in _members(cls):
            yield f"{cls.__name__}.{name}", value


@pytest.mark.parametrize(("name", "value"), list(_public()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_public_name_has_a_docstring(name: str, value: Any) -> None:
    doc = value.__doc__ or ""
    if inspect.isclass(value) and doc.startswith(f"{value.__name__}("):  # a dataclass's generated signature
        doc = ""
    assert doc.strip(), f"{name} has no docstring"


def _section(text: str, heading: str) -> str:
    """The part of the reference under ``heading`` (a level-3 heading naming the object), to the next heading."""
    match = re.search(rf"^### `{re.escape(heading)}`[^\n]*\n(.*?)(?=^##|\Z)", text, re.M | re.S)
    assert match is not None, f"docs/api.md has no section '### `{heading}`'"
    return match.group(1)


@pytest.mark.parametrize("cls", WITH_MEMBERS, ids=lambda c: c.__name__)
def test_the_reference_names_every_method_and_its_parameters(cls: type) -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    section = _section(text, cls.__name__)
    for name, value in _members(cls):
        assert re.search(rf"\b{name}\b", section), f"docs/api.md, {cls.__name__}: {name} is not described"
        if isinstance(value, property):
            continue
        for parameter in list(inspect.signature(value).parameters)[1:]:  # past self / cls
            assert re.search(rf"\b{parameter}\b", section), (
                f"docs/api.md, {cls.__name__}.{name}: its parameter {parameter} is not described")


@pytest.mark.parametrize("method", [Library.save, Library.add, Library.update])
def test_visibility_is_typed_as_its_names_so_a_type_checker_catches_a_typo(method: Any) -> None:
    """An app checked by mypy learns of visibility="pubic" before it runs: the parameter takes a Visibility or
    one of its names, not any text."""
    import typing

    from localvault import Visibility

    hint = typing.get_type_hints(method)["visibility"]
    names = {arg for part in typing.get_args(hint) for arg in typing.get_args(part)}
    assert set(typing.get_args(hint)) - {Visibility} and names == {v.value for v in Visibility}
    assert str not in typing.get_args(hint)
