"""The ingress: reads the request, names its session, relays it to an engine replica.

Why an ingress of its own rather than `serve.ingress` on the engine deployment: the
session key lives in the JSON body (`prompt_cache_key`, the first messages), and
Serve's HTTP proxy routes before any body is read. Here the body is read once, the key
travels with the call as a keyword argument, and the engine deployment's request router
(chatd.cluster.routing) picks the replica. The ingress needs no CPU of its own.

Faults: a replica that dies before its response started is retried once on another
replica (nothing was sent, so nothing is repeated to the client); one that dies while
streaming ends the stream with OpenAI's SSE error event and `[DONE]`; a response that
cannot start gets a 503 envelope the official SDK retries.
"""


import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.types import Receive, Scope, Send

from chatd.api.errors import APIError, sse_error_event
from chatd.api.protocol import SSE_DONE
from chatd.cluster.routing import SESSION_KWARG
from chatd.cluster.session import session_key

log = logging.getLogger("chatd.cluster")

ATTEMPTS = 2
"""Tries per request when a replica dies before answering (the first, and one more)."""

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def replica_lost() -> APIError:
    """The replica serving a request died; the request may be sent again."""
    return APIError("The server replica handling this request failed. Please retry.",
                    status_code=503, type="server_error", code="replica_unavailable",
                    headers={"retry-after": "1", "x-should-retry": "true"})


class _Relay(Response):
    """Sends the engine's response as it came (status, headers with duplicates, body
    chunks), and ends a stream properly if the replica dies part-way."""

    def __init__(self, start: dict[str, Any], rest: Any) -> None:
        # Serve's proxy adds x-request-id itself (the id chatd was given and echoes).
        start = {**start, "headers": [(k, v) for k, v in start.get("headers", [])
                                      if k.lower() != b"x-request-id"]}
        self.start = start
        self.rest = rest  # the rest of the engine's stream of ASGI messages
        self.background = None
        headers = dict((k.lower(), v) for k, v in start.get("headers", []))
        self.is_sse = headers.get(b"content-type", b"").startswith(b"text/event-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.ensure_future(self._relay(send))
        watch = asyncio.ensure_future(self._client_gone(receive))
        try:
            await asyncio.wait({relay, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relay, watch):
                task.cancel()
            if not relay.done() or relay.cancelled():
                self.rest.cancel()  # the client left: the replica cancels its generation
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await relay

    @staticmethod
    async def _client_gone(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _relay(self, send: Send) -> None:
        await send(self.start)
        ended = False
        try:
            async for message in self.rest:
                ended = not message.get("more_body", False)
                await send(message)
                if ended:
                    return
        except Exception as exc:  # the replica died, or its app crashed, mid-response
            log.warning("response from an engine replica ended early: %r", exc)
            if self.is_sse:
                tail = (sse_error_event(replica_lost()) + SSE_DONE).encode()
                await send({"type": "http.response.body", "body": tail, "more_body": False})
                return
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class Ingress:
    """The ingress deployment's class; `chatd.cluster.app` wraps it for Serve."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine.options(stream=True, method_name="handle")

    async def forward(self, request: Request) -> Response:
        body = await request.body()
        scope = request.scope
        call = {
            "method": scope["method"], "path": scope["path"],
            "query_string": scope.get("query_string", b""), "headers": scope["headers"],
            "scheme": scope.get("scheme", "http"),
            "client": tuple(scope["client"]) if scope.get("client") else None,
            "server": tuple(scope["server"]) if scope.get("server") else None,
        }
        key = session_key(body, request.headers)
        for attempt in range(1, ATTEMPTS + 1):
            stream = self.engine.remote(call, body, **{SESSION_KWARG: key})
            try:
                start = await stream.__anext__()
            except asyncio.CancelledError:  # the client left while the request waited
                stream.cancel()
                raise
            except RayActorError as exc:
                log.warning("engine replica lost before answering (try %d of %d): %r",
                            attempt, ATTEMPTS, exc)
                continue
            except BackPressureError:
                return APIError.overloaded(retry_after=1.0).to_response()
            except (StopAsyncIteration, Exception) as exc:
                log.error("engine replica failed before answering: %r", exc)
                return APIError.internal().to_response()
            return _Relay(start, stream)
        return replica_lost().to_response()


def ingress_app(cls: type) -> type:
    """`serve.ingress` over a FastAPI app whose one route relays everything. (This
    module has no `from __future__ import annotations`: Serve rebuilds the route's
    signature elsewhere, where a string annotation `Request` would not resolve.)"""
    from ray import serve

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @serve.ingress(app)
    class ChatdIngress(cls):  # type: ignore[misc, valid-type]
        @app.api_route("/{path:path}", methods=METHODS, include_in_schema=False)
        async def relay(self, request: Request) -> Response:
            return await self.forward(request)

    ChatdIngress.__name__ = "ChatdIngress"
    return ChatdIngress
