"""The store a running server holds: its lifecycle, and writes that always finish.

A write is its own task, shielded from the request that asked for it: a client that
hangs up (or a response cancelled at shutdown) while its completion is being saved
cannot leave half a transaction behind, and closing the store waits for every write
still running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from sqlalchemy.engine import URL

from chatd.store import migrations
from chatd.store.database import Database, database_url, describe
from chatd.store.records import NewCompletion, Order, Records, StoredRecord
from chatd.store.responses import ResponseRecords, StoredResponse
from chatd.store.retention import Retention

T = TypeVar("T")


class CompletionStore:
    def __init__(self, url: URL, *, max_age: float | None = None) -> None:
        self.db = Database(url)
        self.records = Records(self.db)
        self.responses = ResponseRecords(self.db)
        self.retention = (Retention(max_age, self._delete_created_before)
                          if max_age else None)
        self._writes: set[asyncio.Future[Any]] = set()

    @classmethod
    def from_spec(cls, spec: str | None, *, max_age: float | None = None) -> CompletionStore:
        """`--store` (None: the default SQLite file in the user's data directory)."""
        return cls(database_url(spec), max_age=max_age)

    @property
    def location(self) -> str:
        return describe(self.db.url)

    # ---- lifecycle ------------------------------------------------------------------

    async def open(self) -> int:
        """Connect and migrate; returns the schema version found (0: a new store)."""
        await self.db.open()
        async with self.db.transaction(write=True) as conn:
            return await conn.run_sync(migrations.upgrade)

    def prepare(self) -> int:
        """Open, migrate and close, on a loop of its own: at start-up, before the model
        loads, so a store that cannot be used stops chatd with one clear line."""

        async def once() -> int:
            try:
                return await self.open()
            finally:
                await self.db.close()

        return asyncio.run(once())

    async def start(self) -> None:
        """On the server's loop: connect, then begin the retention sweeps."""
        await self.open()
        if self.retention is not None:
            self.retention.start()

    async def close(self) -> None:
        if self.retention is not None:
            await self.retention.stop()
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self.db.close()

    # ---- what the routes call ---------------------------------------------------------

    async def save(self, *, owner: str, id: str, created: int, model: str, completion: str,
                   messages: list[dict[str, Any]], metadata: Mapping[str, str]) -> None:
        await self._write(self.records.insert(NewCompletion(
            owner=owner, id=id, created=created, model=model, completion=completion,
            messages=messages, metadata=metadata)))

    async def get(self, owner: str, completion_id: str) -> StoredRecord | None:
        return await self.records.get(owner, completion_id)

    async def page(self, owner: str, *, after: str | None, limit: int, order: Order,
                   model: str | None = None, metadata: Mapping[str, str] | None = None
                   ) -> tuple[list[StoredRecord], bool] | None:
        return await self.records.page(owner, after=after, limit=limit, order=order,
                                       model=model, metadata=metadata)

    async def set_metadata(self, owner: str, completion_id: str,
                           metadata: Mapping[str, str]) -> StoredRecord | None:
        return await self._write(self.records.set_metadata(owner, completion_id, metadata))

    async def delete(self, owner: str, completion_id: str) -> bool:
        return await self._write(self.records.delete(owner, completion_id))

    async def messages(self, owner: str, completion_id: str) -> list[dict[str, Any]] | None:
        return await self.records.messages(owner, completion_id)

    async def _delete_created_before(self, cutoff: int) -> int:
        """Retention covers stored completions and stored Responses alike."""
        return (await self.records.delete_created_before(cutoff)
                + await self.responses.delete_created_before(cutoff))

    # ---- stored Responses (`POST /v1/responses`) -------------------------------------

    async def save_response(self, *, owner: str, id: str, created: int, status: str,
                            response: str, input_items: list[dict[str, Any]],
                            context: list[dict[str, Any]]) -> None:
        await self._write(self.responses.insert(
            owner=owner, id=id, created=created, status=status, response=response,
            input_items=input_items, context=context))

    async def update_response(self, owner: str, response_id: str, *, status: str,
                              response: str) -> bool:
        return await self._write(self.responses.update(owner, response_id, status=status,
                                                       response=response))

    async def beat_response(self, owner: str, response_id: str) -> bool:
        return await self._write(self.responses.beat(owner, response_id))

    async def get_response(self, owner: str, response_id: str) -> StoredResponse | None:
        return await self.responses.get(owner, response_id)

    async def delete_response(self, owner: str, response_id: str) -> bool:
        return await self._write(self.responses.delete(owner, response_id))

    async def _write(self, work: Awaitable[T]) -> T:
        task = asyncio.ensure_future(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return await asyncio.shield(task)
