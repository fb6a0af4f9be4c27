"""The schema the console had before it had migrations: its tables and indexes, as they were.

Every statement says IF NOT EXISTS, so a database that older console created is adopted as it
stands (nothing to detect, no row touched) and from then on the version table tracks it.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS console_items (
        loop_name TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        record TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        deadline DOUBLE PRECISION NOT NULL,
        requeued INTEGER NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        claimed_by TEXT,
        claimed_at DOUBLE PRECISION,
        claim_expires DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS console_items_queue ON console_items (status, deadline)",
    "CREATE INDEX IF NOT EXISTS console_items_claims ON console_items (claimed_by)",
    """CREATE TABLE IF NOT EXISTS console_decisions (
        loop_name TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        reviewer TEXT NOT NULL,
        labels TEXT NOT NULL,
        accepted_at DOUBLE PRECISION NOT NULL,
        submitted_at DOUBLE PRECISION NOT NULL,
        output_uri TEXT NOT NULL,
        output TEXT NOT NULL,
        event TEXT NOT NULL,
        published_at DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS console_decisions_time ON console_decisions (submitted_at)",
    """CREATE TABLE IF NOT EXISTS console_sessions (
        id_hash TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS console_login_failures (
        username TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        locked_until DOUBLE PRECISION NOT NULL,
        last_failure DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS console_login_failures_time"
    " ON console_login_failures (last_failure)",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for table in (
        "console_login_failures",
        "console_sessions",
        "console_decisions",
        "console_items",
    ):
        op.drop_table(table)  # its indexes go with it
