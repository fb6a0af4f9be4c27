"""Brings the console's database to the newest schema (Alembic), at every start-up.

Replicas starting together migrate one at a time, in one transaction (see
:meth:`Database.lock_for_migrations`); the second finds the schema current and does nothing.
A new migration goes in ``migrations/versions/`` (``alembic_config()`` with Alembic's
``command.revision`` writes the skeleton); it runs on the next start of any replica.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from service.console.storage.database import Database

MIGRATIONS = Path(__file__).with_name("migrations")
#: Not Alembic's default name: the database may be shared with another application's Alembic.
VERSION_TABLE = "console_schema_version"

log = logging.getLogger(__name__)
# Alembic narrates every start at INFO (plugin set-up, dialect); one line of ours says what changed.
logging.getLogger("alembic").setLevel(logging.WARNING)


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """Alembic's configuration for the console: no ini file, the scripts in this package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def migrate(database: Database) -> None:
    async with database.transaction() as conn:
        await database.lock_for_migrations(conn)
        await conn.run_sync(_upgrade)


def _upgrade(connection: sa.Connection) -> None:
    before = _revision(connection)
    command.upgrade(alembic_config(connection), "head")
    after = _revision(connection)
    if after != before:
        log.info("console database schema migrated from %s to %s", before or "none", after)


def _revision(connection: sa.Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()
