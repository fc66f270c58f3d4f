"""``python -m localvault``: the same as the ``localvault`` command (for when the script is not on PATH)."""

from .cli import run

run()
