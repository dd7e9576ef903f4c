"""Alembic environment of the flashstock ledger.

Run through :func:`flashstock.server.ledger.upgrade` (``flashstock ledger
upgrade``), which hands over an open connection; there is no alembic.ini.
"""

from alembic import context

from flashstock.server.ledger._schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
