"""The ``localvault`` command (:mod:`localvault.cli.app` and its ``*_commands`` modules).

This package's own import is light (the package ``localvault`` imports its models lazily too): :func:`run`,
the console script, loads the command itself, so a Ctrl-C while Python still loads it ends the command as a
Ctrl-C during one does (one line, exit 130), not with a traceback.
"""

from __future__ import annotations

import sys
from typing import Any


def run() -> None:
    """The ``localvault`` console script: load the command, then run it."""
    try:
        from .app import main
    except KeyboardInterrupt:
        if "--json" in sys.argv[1:]:
            sys.stdout.write('{"error": {"message": "interrupted", "exit_code": 130, "kind": "Interrupted"}}\n')
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
    main(prog_name="localvault")


#: What :mod:`localvault.cli.app` gives under this package's name (``from localvault.cli import main``).
_FROM_APP = frozenset({"main", "Context", "VaultGroup", "json_option", "pass_ctx"})


def __getattr__(name: str) -> Any:  # loaded on first use (any other name: a submodule, or none)
    if name not in _FROM_APP:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(".app", __name__), name)
