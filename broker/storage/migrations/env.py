"""Alembic environment: always run from :mod:`broker.storage.migrate`, never from an ini file.

The caller hands over an open connection (holding the migration lock) in
``config.attributes["connection"]``, so the lock and the migration share it.
"""

from __future__ import annotations

from alembic import context

from broker.storage.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
