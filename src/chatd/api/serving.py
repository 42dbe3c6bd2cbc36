"""The part every generating route shares: admission, disconnects, and a stream that
always ends properly. Routes differ only in their wire objects."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from chatd.api.context import ServerContext, context
from chatd.api.disconnect import ClientGone, unless_disconnected
from chatd.api.errors import APIError, sse_error_event
from chatd.api.protocol import SSE_DONE
from chatd.chat.errors import ChatRequestError, GenerationFailed
from chatd.chat.service import ChatService

log = logging.getLogger("chatd.api")
# nginx's status for "the client closed the connection before the response".
CLIENT_CLOSED_REQUEST = 499


async def checked(request: Request, body: Any,
                  prepare: Callable[[ChatService, Any], Awaitable[Any]]
                  ) -> tuple[ServerContext, Any]:
    """The caller's key (401), its requests per minute (429), the model (404), then the
    chat layer's own checks (400); returns the server context and the prepared request."""
    ctx = context(request)
    ctx.auth.check(request)
    ctx.gate.count_request(request, body)
    if body.model != ctx.model_name:
        raise APIError.model_not_found(body.model)
    try:
        return ctx, await prepare(ctx.chat, body)
    except ChatRequestError as exc:
        raise APIError.from_chat_error(exc) from exc


async def respond(ctx: ServerContext, request: Request, prepared: Any, *, stream: bool,
                  events: Callable[[], AsyncIterator[str]],
                  complete: Callable[[], Awaitable[Response]]) -> Response:
    """Wait for a slot (429/503 from the gate), then stream `events()` as SSE or return
    `complete()`. A client that leaves while queued or waiting cancels its generation."""
    try:
        if stream:
            # Once streaming, Starlette notices a disconnect; while queued, we must.
            await unless_disconnected(request.receive, ctx.gate.admit(request, prepared))
            return StreamingResponse(_ended_properly(events()), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache"})
        return await unless_disconnected(request.receive, _admitted(ctx, request, prepared,
                                                                    complete))
    except ClientGone:
        log.info("client disconnected before the response; its generation was cancelled")
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it: for the logs


async def _admitted(ctx: ServerContext, request: Request, prepared: Any,
                    complete: Callable[[], Awaitable[Response]]) -> Response:
    await ctx.gate.admit(request, prepared)  # tokens per minute: 429; queue: 503
    try:
        return await complete()
    except GenerationFailed as exc:
        log.error("generation failed: %s", exc)
        raise APIError.internal() from exc


async def _ended_properly(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """The route's events, then [DONE]; a late failure is an error event and [DONE],
    since the headers are sent: the stream is never torn."""
    try:
        async with contextlib.aclosing(events):  # a client gone closes the generation now
            async for event in events:
                yield event
    except Exception as exc:
        if isinstance(exc, GenerationFailed):
            log.error("generation failed mid-stream: %s", exc)
        else:
            log.exception("error while streaming")
        yield sse_error_event(APIError.internal())
    yield SSE_DONE
