"""The console's tables as SQLAlchemy Core objects, for building statements (not for creating
them: the migrations own the schema, and a test checks that the two agree)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

#: One review item: the stored review record, its deadline and who holds the claim on it.
items = sa.Table(
    "console_items",
    metadata,
    sa.Column("loop_name", sa.Text, primary_key=True),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("created_at", sa.DOUBLE_PRECISION, nullable=False),
    sa.Column("deadline", sa.DOUBLE_PRECISION, nullable=False),
    sa.Column("requeued", sa.Integer, nullable=False),
    sa.Column("received_at", sa.DOUBLE_PRECISION, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("claimed_by", sa.Text),
    sa.Column("claimed_at", sa.DOUBLE_PRECISION),
    sa.Column("claim_expires", sa.DOUBLE_PRECISION),
    sa.Index("console_items_queue", "status", "deadline"),
    sa.Index("console_items_claims", "claimed_by"),
)

#: One reviewer's answer and the outbox row: the exact output.json and completion event bytes.
decisions = sa.Table(
    "console_decisions",
    metadata,
    sa.Column("loop_name", sa.Text, primary_key=True),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("reviewer", sa.Text, nullable=False),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("accepted_at", sa.DOUBLE_PRECISION, nullable=False),
    sa.Column("submitted_at", sa.DOUBLE_PRECISION, nullable=False),
    sa.Column("output_uri", sa.Text, nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("published_at", sa.DOUBLE_PRECISION),
    sa.Index("console_decisions_time", "submitted_at"),
)

#: A logged-in browser: only a SHA-256 of the session id is kept.
sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id_hash", sa.Text, primary_key=True),
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("csrf", sa.Text, nullable=False),
    sa.Column("created_at", sa.DOUBLE_PRECISION, nullable=False),
    sa.Column("expires_at", sa.DOUBLE_PRECISION, nullable=False),
)

#: The current run of login attempts per user name (the lockout every replica shares).
login_failures = sa.Table(
    "console_login_failures",
    metadata,
    sa.Column("username", sa.Text, primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("locked_until", sa.DOUBLE_PRECISION, nullable=False),
    sa.Column("last_failure", sa.DOUBLE_PRECISION, nullable=False),
    sa.Index("console_login_failures_time", "last_failure"),
)
