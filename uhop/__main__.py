"""``python -m uhop`` is the ``uhop`` command."""

from uhop.cli import main

main()
