"""``python -m flashstock.server``: the same as the ``flashstock`` command."""

from .cli import main

main()
