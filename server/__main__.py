"""``python -m flashstock.server``: the same as the ``flashstock`` command."""

from flashstock.server.cli.app import main

main()
