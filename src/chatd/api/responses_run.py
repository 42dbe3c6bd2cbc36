"""Running one Response: in the foreground (JSON or SSE) or in the background.

Generation is the chat layer's (`ChatService.run`) on the request the Responses
request became; `ResponseBuilder` turns its deltas into items and events. A stored
response is written before its terminal event goes out, so a client that reads it
back at once finds it. A background response runs as a task of its own, outside the
request that created it: it takes its own admission slot, writes each status change
(queued -> in_progress -> completed / incomplete / failed / cancelled) to the store,
and is cancelled through the registry `POST /cancel` looks in, or, when the cancel
(or a delete) reached another replica, by noticing it in the store within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from chatd.api.context import ServerContext
from chatd.api.errors import APIError
from chatd.api.ratelimit import Reservation
from chatd.api.responses_output import Event, ResponseBuilder, sse
from chatd.api.storing import ResponseStorage
from chatd.chat.generation import UsageCount
from chatd.chat.service import PreparedChat

log = logging.getLogger("chatd.api")

_TERMINAL = ("response.completed", "response.incomplete")
CANCEL_POLL_S = 1.0
"""How often a running background response beats in the store (and so learns of a
cancel or delete that reached another replica)."""
STALE_S = 15.0
"""A queued / in_progress response whose server has not beaten for this long has lost
it (killed, or its machine gone): it is reported failed rather than running forever."""


@dataclass(frozen=True)
class Saving:
    """Where and how a response that asked to be stored (the default) is kept."""

    storage: ResponseStorage
    owner: str
    input_items: list[dict[str, Any]]
    context: list[dict[str, Any]]

    async def insert(self, response: dict[str, Any]) -> None:
        try:
            await self.storage.save_response(
                owner=self.owner, id=response["id"], created=response["created_at"],
                status=response["status"], response=_text(response),
                input_items=self.input_items, context=self.context)
        except Exception as exc:
            log.exception("could not store response %s", response["id"])
            raise APIError("The response was generated but could not be stored.",
                           status_code=500, type="server_error") from exc

    async def update(self, response: dict[str, Any]) -> bool:
        return await self.storage.update_response(
            self.owner, response["id"], status=response["status"],
            response=_text(response))


def _text(response: dict[str, Any]) -> str:
    return json.dumps(response, separators=(",", ":"))


async def generate(ctx: ServerContext, prepared: PreparedChat, builder: ResponseBuilder, *,
                   streaming: bool, usage: UsageCount | None = None, opening: bool = True
                   ) -> AsyncIterator[Event]:
    """Every event of the response, the terminal one last; `usage` is filled as the
    tokens are counted. A background run has sent its opening events itself."""
    if opening:
        for event in builder.opening():
            yield event
    usage = usage if usage is not None else UsageCount()
    finish: str | None = None
    async with contextlib.aclosing(ctx.chat.run(prepared, usage, streaming=streaming)
                                   ) as deltas:
        async for delta in deltas:
            if delta.index != 0:
                continue
            for event in builder.feed(delta):
                yield event
            finish = delta.finish_reason or finish
    for event in builder.finish(finish, usage):
        yield event


async def complete(ctx: ServerContext, prepared: PreparedChat, builder: ResponseBuilder,
                   saving: Saving | None) -> str:
    """The whole response as JSON text (stored first when asked)."""
    async with contextlib.aclosing(generate(ctx, prepared, builder, streaming=False)) as events:
        async for _ in events:
            pass
    if saving is not None:
        await saving.insert(builder.response)
    return _text(builder.response)


async def stream(ctx: ServerContext, prepared: PreparedChat, builder: ResponseBuilder,
                 saving: Saving | None) -> AsyncIterator[str]:
    """SSE events; a failure after the headers is a ``response.failed`` event."""
    try:
        async with contextlib.aclosing(generate(ctx, prepared, builder, streaming=True)
                                       ) as events:
            async for event in events:
                if event["type"] in _TERMINAL and saving is not None:
                    await saving.insert(builder.response)
                yield sse(event)
    except Exception as exc:
        log.exception("error while streaming a response: %s", exc)
        yield sse(builder.fail("The server had an error while processing your request."))


# --------------------------------------------------------------------------- background


class BackgroundRun:
    """One background response's events as they happen, for whoever streams it (the
    POST with ``stream: true``, or ``GET ?stream=true&starting_after=N``): an event's
    ``sequence_number`` is its index here, so a reader can resume after any of them."""

    def __init__(self, builder: ResponseBuilder) -> None:
        self.builder = builder
        self.events: list[Event] = []
        self.done = False
        self._changed = asyncio.Event()

    def publish(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    def finish(self) -> None:
        self.done = True
        self._changed.set()

    async def follow(self, after: int) -> AsyncIterator[str]:
        """The events after sequence number `after`, as SSE, until the run ends. A
        reader that leaves does not stop the run: it is the background's own."""
        index = max(after + 1, 0)
        while True:
            while index < len(self.events):
                yield sse(self.events[index])
                index += 1
            if self.done:
                return
            self._changed.clear()
            await self._changed.wait()


class Background:
    """The background responses this process runs, by id; a finished run's events
    stay readable for `KEPT_S` seconds (a reader may come just after the end)."""

    KEPT_S = 300.0

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.runs: dict[str, BackgroundRun] = {}

    def start(self, ctx: ServerContext, prepared: PreparedChat, builder: ResponseBuilder,
              saving: Saving, reservation: Reservation | None) -> BackgroundRun:
        """Run it; `reservation` (the key's tokens-per-minute share, already taken) is
        settled by the task with the tokens it used."""
        response_id = builder.response["id"]
        run = BackgroundRun(builder)
        run.publish(builder.event("response.created", response=builder.snapshot()))
        run.publish(builder.event("response.queued", response=builder.snapshot()))
        self.runs[response_id] = run
        # A fresh context: the task outlives the request whose record the metering
        # would otherwise stamp (and whose admission slot it would hold).
        loop = asyncio.get_running_loop()
        task = loop.create_task(_run_background(ctx, prepared, run, saving, reservation),
                                name=f"chatd-response-{response_id}",
                                context=contextvars.Context())
        self.tasks[response_id] = task

        def ended(_: asyncio.Task[None]) -> None:
            self.tasks.pop(response_id, None)
            run.finish()
            loop.call_later(self.KEPT_S, self.runs.pop, response_id, None)

        task.add_done_callback(ended)
        return run

    async def cancel(self, response_id: str) -> bool:
        """Cancel it here and wait until its final status is written; False when it
        does not run in this process."""
        task = self.tasks.get(response_id)
        if task is None:
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return True

    async def close(self) -> None:
        for response_id in list(self.tasks):
            await self.cancel(response_id)


async def _watch(saving: Saving, response_id: str, task: asyncio.Task[Any]) -> None:
    """Beat for the response while it runs; cancel `task` once the stored response
    is cancelled or deleted elsewhere (by a replica sharing the database)."""
    while True:
        await asyncio.sleep(CANCEL_POLL_S)
        try:
            alive = await saving.storage.beat_response(saving.owner, response_id)
        except Exception:  # the database briefly away: try again next time
            log.warning("could not beat for background response %s", response_id)
            continue
        if not alive:
            task.cancel()
            return


async def _run_background(ctx: ServerContext, prepared: PreparedChat, run: BackgroundRun,
                          saving: Saving, reservation: Reservation | None) -> None:
    ticket = None
    builder = run.builder
    response = builder.response
    usage = UsageCount()
    this = asyncio.current_task()
    assert this is not None
    watcher = asyncio.get_running_loop().create_task(_watch(saving, response["id"], this))
    try:
        try:
            ticket = await ctx.gate.queue.acquire(prepared.sequences)
        except APIError:  # turned away for overload: nothing is charged
            if reservation is not None:
                reservation.cancel()
                reservation = None
            raise
        response["status"] = "in_progress"
        await saving.update(response)
        run.publish(builder.event("response.in_progress", response=builder.snapshot()))
        async with contextlib.aclosing(generate(ctx, prepared, builder, streaming=True,
                                                usage=usage, opening=False)) as events:
            async for event in events:
                if event["type"] in _TERMINAL:
                    watcher.cancel()
                    await saving.update(response)  # stored before the reader hears it
                run.publish(event)
    except asyncio.CancelledError:
        response["status"] = "cancelled"
        await saving.update(response)
        run.publish(builder.event("error", code="response_cancelled", param=None,
                                  message="The response was cancelled."))
        raise
    except Exception as exc:
        log.exception("background response %s failed", response["id"])
        message = exc.message if isinstance(exc, APIError) else (
            "The server had an error while processing your request.")
        run.publish(builder.fail(message))
        await saving.update(response)
    finally:
        watcher.cancel()
        if ticket is not None:
            ticket.release()
        if reservation is not None:
            reservation.settle(usage.prompt_tokens + usage.completion_tokens)
