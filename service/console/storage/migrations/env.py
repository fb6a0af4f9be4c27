"""Alembic's entry point: the migrations run on the connection (and inside the transaction)
that :func:`service.console.storage.migrate.migrate` hands over."""

from __future__ import annotations

from alembic import context

from service.console.storage.migrate import VERSION_TABLE
from service.console.storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the console migrates its database at start-up; run the console")
context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
