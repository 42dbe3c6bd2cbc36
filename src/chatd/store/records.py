"""Queries on stored completions, always within one owner's rows.

Every query names the owner, so one API key can never read, list, change or delete
another's completions: for it they simply do not exist. Completions are ordered by
their `created` second, then by the order they were stored in; a page's cursor is
the id of the last completion of the previous page.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from chatd.store.database import Database
from chatd.store.tables import completion_metadata, completions

Order = Literal["asc", "desc"]

_META = completions.c["metadata"]


@dataclass(frozen=True)
class StoredRecord:
    """One stored completion: its JSON as the POST returned it, and its metadata."""

    id: str
    completion: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class NewCompletion:
    """What is written when a completion asked to be stored has ended."""

    owner: str
    id: str
    created: int
    model: str
    completion: str                 # JSON text
    messages: list[dict[str, Any]]  # the input messages, as stored
    metadata: Mapping[str, str]


def _matchable(*texts: str | None) -> bool:
    """PostgreSQL text cannot hold NUL, so nothing stored has one: a lookup for such a
    value matches nothing, and is answered without asking the database."""
    return not any(t is not None and "\x00" in t for t in texts)


def _json(value: Any) -> str:
    """JSON kept as ASCII: text any database takes, whatever the client sent."""
    return json.dumps(value, separators=(",", ":"))


def _record(row: Any) -> StoredRecord:
    return StoredRecord(id=row.id, completion=row.completion, metadata=json.loads(row.metadata))


class Records:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, new: NewCompletion) -> None:
        async with self.db.transaction(write=True) as conn:
            result = await conn.execute(completions.insert().values(
                id=new.id, owner=new.owner, created=new.created, model=new.model,
                metadata=_json(dict(new.metadata)), completion=new.completion,
                messages=_json(new.messages)))
            seq = result.inserted_primary_key[0]
            await _write_pairs(conn, seq, new.metadata)

    async def get(self, owner: str, completion_id: str) -> StoredRecord | None:
        if not _matchable(completion_id):
            return None
        async with self.db.transaction() as conn:
            row = (await conn.execute(
                sa.select(completions.c.id, completions.c.completion, _META)
                .where(completions.c.owner == owner, completions.c.id == completion_id),
            )).first()
        return None if row is None else _record(row)

    async def page(self, owner: str, *, after: str | None, limit: int, order: Order,
                   model: str | None = None, metadata: Mapping[str, str] | None = None
                   ) -> tuple[list[StoredRecord], bool] | None:
        """Up to `limit` completions after the cursor, and whether more follow; None
        when the cursor is not one of this owner's completions."""
        if not _matchable(after):
            return None
        pairs = dict(metadata or {})
        if not _matchable(model, *pairs, *pairs.values()):
            return [], False
        c = completions.c
        query = sa.select(c.id, c.completion, _META).where(c.owner == owner)
        if model is not None:
            query = query.where(c.model == model)
        for key, value in pairs.items():
            query = query.where(sa.exists().where(
                completion_metadata.c.completion_seq == c.seq,
                completion_metadata.c.key == key, completion_metadata.c.value == value))
        key_cols = (c.created, c.seq)
        async with self.db.transaction() as conn:
            if after is not None:
                cursor = (await conn.execute(
                    sa.select(*key_cols).where(c.owner == owner, c.id == after))).first()
                if cursor is None:
                    return None
                beyond = (sa.tuple_(*key_cols) > sa.tuple_(*cursor) if order == "asc"
                          else sa.tuple_(*key_cols) < sa.tuple_(*cursor))
                query = query.where(beyond)
            direction = sa.asc if order == "asc" else sa.desc
            query = query.order_by(*(direction(col) for col in key_cols)).limit(limit + 1)
            rows = (await conn.execute(query)).all()
        return [_record(r) for r in rows[:limit]], len(rows) > limit

    async def set_metadata(self, owner: str, completion_id: str,
                           metadata: Mapping[str, str]) -> StoredRecord | None:
        """Replace the metadata; the completion itself never changes."""
        if not _matchable(completion_id):
            return None
        async with self.db.transaction(write=True) as conn:
            row = (await conn.execute(
                completions.update()
                .where(completions.c.owner == owner, completions.c.id == completion_id)
                .values(metadata=_json(dict(metadata)))
                .returning(completions.c.seq, completions.c.id, completions.c.completion,
                           _META))).first()
            if row is None:
                return None
            await conn.execute(completion_metadata.delete().where(
                completion_metadata.c.completion_seq == row.seq))
            await _write_pairs(conn, row.seq, metadata)
        return _record(row)

    async def delete(self, owner: str, completion_id: str) -> bool:
        if not _matchable(completion_id):
            return False
        async with self.db.transaction(write=True) as conn:
            seqs = sa.select(completions.c.seq).where(
                completions.c.owner == owner, completions.c.id == completion_id)
            return await _delete(conn, seqs) > 0

    async def messages(self, owner: str, completion_id: str) -> list[dict[str, Any]] | None:
        if not _matchable(completion_id):
            return None
        async with self.db.transaction() as conn:
            text = (await conn.execute(
                sa.select(completions.c.messages)
                .where(completions.c.owner == owner, completions.c.id == completion_id),
            )).scalar()
        return None if text is None else json.loads(text)

    async def delete_created_before(self, cutoff: int) -> int:
        """Retention: every owner's completions created before `cutoff` (unix seconds)."""
        async with self.db.transaction(write=True) as conn:
            return await _delete(conn, sa.select(completions.c.seq)
                                 .where(completions.c.created < cutoff))


async def _write_pairs(conn: AsyncConnection, seq: int, metadata: Mapping[str, str]) -> None:
    if metadata:
        await conn.execute(completion_metadata.insert(), [
            {"completion_seq": seq, "key": k, "value": v} for k, v in metadata.items()])


async def _delete(conn: AsyncConnection, seqs: sa.Select) -> int:
    """Delete the completions `seqs` selects, metadata first (SQLite enforces the
    foreign key only where the pragma is on: this does not depend on it)."""
    await conn.execute(completion_metadata.delete().where(
        completion_metadata.c.completion_seq.in_(seqs)))
    result = await conn.execute(completions.delete().where(
        completions.c.seq.in_(seqs)))
    return result.rowcount
