"""``python -m localvault.cli``: the same as the ``localvault`` command."""

from . import main

main(prog_name="localvault")
