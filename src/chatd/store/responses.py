"""Queries on stored Responses, always within one owner's rows.

As with stored completions, every query names the owner: another key's response
does not exist for the caller. A response row is written once when it is created
(background) or finished (foreground); a background response is then rewritten as
its status moves on, and a write never turns a final status back (a response
cancelled while its last tokens were being decoded stays cancelled).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from chatd.store.database import Database
from chatd.store.tables import responses

FINAL_STATUSES = ("completed", "incomplete", "failed", "cancelled")


@dataclass(frozen=True)
class StoredResponse:
    """One stored response: the object (JSON text) and what a continuation needs."""

    id: str
    status: str
    response: str                     # JSON text of the Response object
    input_items: list[dict[str, Any]]  # this request's own input items, with ids
    context: list[dict[str, Any]]      # earlier turns' items followed by input_items
    heartbeat: int | None = None       # unix seconds: its server's last sign of life


def _matchable(text: str) -> bool:
    """PostgreSQL text cannot hold NUL: such an id matches nothing."""
    return "\x00" not in text


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class ResponseRecords:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, *, owner: str, id: str, created: int, status: str, response: str,
                     input_items: list[dict[str, Any]], context: list[dict[str, Any]]
                     ) -> None:
        async with self.db.transaction(write=True) as conn:
            await conn.execute(responses.insert().values(
                id=id, owner=owner, created=created, status=status, response=response,
                input_items=_json(input_items), context=_json(context),
                heartbeat=int(time.time())))

    async def update(self, owner: str, response_id: str, *, status: str, response: str
                     ) -> bool:
        """Rewrite a response that has not reached a final status; False otherwise."""
        async with self.db.transaction(write=True) as conn:
            result = await conn.execute(
                responses.update()
                .where(responses.c.owner == owner, responses.c.id == response_id,
                       responses.c.status.not_in(FINAL_STATUSES))
                .values(status=status, response=response, heartbeat=int(time.time())))
            return result.rowcount > 0

    async def beat(self, owner: str, response_id: str) -> bool:
        """A running background response says it is alive; False when it was
        cancelled, or deleted, elsewhere (its generation should stop)."""
        async with self.db.transaction(write=True) as conn:
            result = await conn.execute(
                responses.update()
                .where(responses.c.owner == owner, responses.c.id == response_id,
                       responses.c.status.not_in(FINAL_STATUSES))
                .values(heartbeat=int(time.time())))
            return result.rowcount > 0

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        if not _matchable(response_id):
            return None
        r = responses.c
        async with self.db.transaction() as conn:
            row = (await conn.execute(
                sa.select(r.id, r.status, r.response, r.input_items, r.context,
                          r.heartbeat)
                .where(r.owner == owner, r.id == response_id))).first()
        if row is None:
            return None
        return StoredResponse(id=row.id, status=row.status, response=row.response,
                              input_items=json.loads(row.input_items),
                              context=json.loads(row.context), heartbeat=row.heartbeat)

    async def delete(self, owner: str, response_id: str) -> bool:
        if not _matchable(response_id):
            return False
        async with self.db.transaction(write=True) as conn:
            result = await conn.execute(responses.delete().where(
                responses.c.owner == owner, responses.c.id == response_id))
            return result.rowcount > 0

    async def delete_created_before(self, cutoff: int) -> int:
        """Retention: every owner's responses created before `cutoff` (unix seconds)."""
        async with self.db.transaction(write=True) as conn:
            result = await conn.execute(responses.delete().where(
                responses.c.created < cutoff))
            return result.rowcount
