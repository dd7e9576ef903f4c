"""``python -m flashstock.server``: the same as the ``flashstock`` command."""

from flashstock.server.cli import main

main()
