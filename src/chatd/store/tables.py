"""The tables as the queries see them: the schema after the latest migration.

A migration never imports these (it writes the tables as they were at its version),
so changing a column here always comes with a new migration in `migrations.py`.
"""

from __future__ import annotations

import sqlalchemy as sa

# SQLite makes only an INTEGER PRIMARY KEY an auto-increment row id; PostgreSQL gets
# 64 bits.
SEQUENCE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

schema_version = sa.Table(
    "chatd_schema", metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

completions = sa.Table(
    "chat_completions", metadata,
    # insertion order: breaks ties between completions created in the same second
    sa.Column("seq", SEQUENCE, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(128), nullable=False, unique=True),
    sa.Column("owner", sa.String(64), nullable=False),   # sha256 of the API key, or ""
    sa.Column("created", sa.BigInteger, nullable=False),  # the completion's own `created`
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),      # JSON object
    sa.Column("completion", sa.Text, nullable=False),    # JSON, as the POST returned it
    sa.Column("messages", sa.Text, nullable=False),      # JSON array: the input messages
)

completion_metadata = sa.Table(
    "chat_completion_metadata", metadata,
    sa.Column("completion_seq", SEQUENCE,
              sa.ForeignKey("chat_completions.seq", ondelete="CASCADE"), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(512), nullable=False),
)

responses = sa.Table(
    "responses", metadata,
    sa.Column("seq", SEQUENCE, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(128), nullable=False, unique=True),
    sa.Column("owner", sa.String(64), nullable=False),    # sha256 of the API key, or ""
    sa.Column("created", sa.BigInteger, nullable=False),  # the response's `created_at`
    sa.Column("status", sa.String(32), nullable=False),   # queued .. completed/cancelled
    sa.Column("response", sa.Text, nullable=False),       # JSON: the Response object
    sa.Column("input_items", sa.Text, nullable=False),    # JSON array: its own input items
    sa.Column("context", sa.Text, nullable=False),        # JSON array: earlier turns + input
    sa.Column("heartbeat", sa.BigInteger, nullable=True),  # background: last sign of life
)
