"""``python -m lmtune.cli``: the same as the ``lmtune`` command."""

from lmtune.cli import main

main()
