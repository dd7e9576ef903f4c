"""The ``flashstock`` command: one module per command group."""
