"""The ``localvault`` command's entry point: a Ctrl-C while Python still loads the command ends it as a Ctrl-C
during a command does (exit 130, one line), not with a traceback (the package's own import is kept light for
this: localvault/__init__.py)."""

from __future__ import annotations

import sys


def main() -> None:
    """Load the command, then run it."""
    try:
        from .cli import main as command
    except KeyboardInterrupt:
        if "--json" in sys.argv[1:]:
            import json

            print(json.dumps({"error": {"message": "interrupted", "exit_code": 130, "kind": "Interrupted"}}))
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
    command(prog_name="localvault")
