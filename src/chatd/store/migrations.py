"""The store's schema, versioned: migration N brings a version N-1 database to N.

Each migration writes its tables as they were at its version (never from
`tables.py`, which moves on), runs in the same transaction as the version bump, and
is applied once, in order, when chatd opens the store. On PostgreSQL several
replicas may start together: an advisory lock lets one of them migrate while the
others wait and then find nothing left to do. A database written by a newer chatd
is refused rather than misread.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

Migration = Callable[[Connection], None]

_ADVISORY_LOCK = 0x63686174  # "chat": any fixed number, shared by every replica


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer chatd than this one."""


def _version_1(conn: Connection) -> None:
    """Stored chat completions, their metadata (one row per pair, for filters that
    work the same on both databases), and the indexes the list queries walk."""
    seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    meta = sa.MetaData()
    completions = sa.Table(
        "chat_completions", meta,
        sa.Column("seq", seq, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(128), nullable=False, unique=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("completion", sa.Text, nullable=False),
        sa.Column("messages", sa.Text, nullable=False),
        sqlite_autoincrement=True,  # a deleted row's seq is never handed out again
    )
    sa.Index("ix_chat_completions_owner_order", completions.c.owner,
             completions.c.created, completions.c.seq)
    sa.Index("ix_chat_completions_created", completions.c.created)
    pairs = sa.Table(
        "chat_completion_metadata", meta,
        sa.Column("completion_seq", seq,
                  sa.ForeignKey("chat_completions.seq", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(512), nullable=False),
    )
    sa.Index("ix_chat_completion_metadata_pair", pairs.c.key, pairs.c.value)
    meta.create_all(conn)


def _version_2(conn: Connection) -> None:
    """Stored Responses (`POST /v1/responses`): the response object as last written
    (a background one is rewritten as it moves from queued to a final status), its own
    input items, the context a `previous_response_id` continuation starts from, and
    when the server running a background one last said it was alive."""
    seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    meta = sa.MetaData()
    responses = sa.Table(
        "responses", meta,
        sa.Column("seq", seq, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(128), nullable=False, unique=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("input_items", sa.Text, nullable=False),
        sa.Column("context", sa.Text, nullable=False),
        sa.Column("heartbeat", sa.BigInteger, nullable=True),
        sqlite_autoincrement=True,
    )
    sa.Index("ix_responses_owner", responses.c.owner, responses.c.id)
    sa.Index("ix_responses_created", responses.c.created)
    meta.create_all(conn)


MIGRATIONS: list[Migration] = [_version_1, _version_2]
"""Append only: a migration that has shipped is never edited."""


def latest() -> int:
    return len(MIGRATIONS)


def upgrade(conn: Connection, migrations: list[Migration] | None = None) -> int:
    """Bring the schema up to date inside the caller's transaction; return the
    version found before (0: a new database)."""
    steps = MIGRATIONS if migrations is None else migrations
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
    version_table = sa.Table("chatd_schema", sa.MetaData(),
                             sa.Column("version", sa.Integer, nullable=False))
    version_table.create(conn, checkfirst=True)
    found = conn.execute(sa.select(version_table.c.version)).scalar()
    if found is None:
        conn.execute(version_table.insert().values(version=0))
        found = 0
    if found > len(steps):
        raise SchemaTooNew(
            f"the store's schema is version {found}, newer than this chatd knows "
            f"({len(steps)}); upgrade chatd or use another --store")
    for number in range(found + 1, len(steps) + 1):
        steps[number - 1](conn)
        conn.execute(version_table.update().values(version=number))
    return found
