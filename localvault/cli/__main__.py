"""``python -m localvault.cli``: the same as the ``localvault`` command."""

from . import run

run()
