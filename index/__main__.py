"""``python -m index``: see ``index.cli``."""

from index.cli import main

main()
