"""The name of the file an asset came from, kept in its ``generation_settings`` as ``source_file``.

An import or a watch keeps the file's path relative to the folder imported
or watched, with ``/`` between its parts (``2026-11-29/ComfyUI_00012_.png``);
``Workspace.add`` and ``Library.add`` keep its base name. Never an absolute
path: the settings go to the server, and the user's home folder must not. A
symbolic link is named as it is in the folder, not by its target.

The name is stored as valid UTF-8 text (the bytes of a name that are not
UTF-8 become U+FFFD; a NUL, which no name holds, is dropped): PostgreSQL's
jsonb takes nothing else. Settings already at the size limit
(:data:`~localvault.models.MAX_SETTINGS_BYTES`) are kept without the name.
"""

from __future__ import annotations

import json
import os
from typing import Any

from . import models
from .errors import InvalidInputError

#: The key of ``generation_settings`` holding the name of the file an asset came from.
SOURCE_FILE = "source_file"

#: (seed, prompt, model, settings JSON) of a workspace row.
RowValues = tuple[int, str, str, str]


def storable_name(name: str) -> str:
    """``name`` as text the vault and the server can store: bytes that are not UTF-8 (which Python keeps as
    lone surrogates) replaced by U+FFFD, NUL dropped."""
    if models.SURROGATES.search(name):
        try:
            raw = os.fsencode(name)  # the name's own bytes (surrogate escapes back to the bytes they stand for)
        except UnicodeEncodeError:  # a surrogate no file system name decodes to (text given by a caller)
            raw = name.encode("utf-8", "surrogatepass")
        name = raw.decode("utf-8", "replace")
    return name.replace("\0", "")


def relative_name(path: str, folder: str) -> str | None:
    """``path`` relative to ``folder`` (both absolute, or both relative to the same place), ``/`` between its
    parts; None when it is not inside ``folder``. The last part is not followed (a link keeps its own name)."""
    relative = os.path.relpath(path, folder)
    if relative == os.curdir or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return None
    return relative if os.sep == "/" else relative.replace(os.sep, "/")


def settings_with_name(settings: dict[str, Any], name: str | None) -> str:
    """The stored JSON of ``settings`` with ``source_file``: ``name`` (already :func:`storable_name`); without it
    when ``name`` is None or empty, or when it would take the settings over the size limit."""
    if not name:
        return models.settings_json(settings)
    named = {key: value for key, value in settings.items() if key != SOURCE_FILE}
    named[SOURCE_FILE] = name  # (last: what the rig recorded comes first)
    try:
        return models.settings_json(named)
    except InvalidInputError:  # over the limit with the name: the settings as they are (or their own error)
        return models.settings_json(settings)


def name_in(settings: str) -> str | None:
    """The ``source_file`` of stored settings JSON, if it holds one."""
    try:
        name = json.loads(settings).get(SOURCE_FILE)
    except (ValueError, AttributeError):  # (not an object: not a row's settings)
        return None
    return name if isinstance(name, str) else None


def renamed(values: RowValues, name: str | None) -> RowValues:
    """Row values with their ``source_file`` replaced by ``name`` (None: removed)."""
    settings = json.loads(values[3])
    settings.pop(SOURCE_FILE, None)
    return (values[0], values[1], values[2], settings_with_name(settings, name))


__all__ = ["SOURCE_FILE", "RowValues", "name_in", "relative_name", "renamed", "settings_with_name", "storable_name"]
