"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer SSE streams).

- A body-size limit that answers 413 before a large body is read into memory.
- `x-request-id` (the client's, or a new one) and `openai-processing-ms` headers.
"""

from __future__ import annotations

import json
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatd.api.errors import APIError


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> APIError:
    return APIError.request_too_large(
        f"Request body too large: the limit is {limit} bytes. Send a shorter conversation.")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or (
            "req_" + uuid.uuid4().hex)
        scope.setdefault("state", {})["request_id"] = request_id
        limit = self.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._send_error(send, _too_large(limit), request_id, started)
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                elapsed = int((time.perf_counter() - started) * 1000)
                extra = [(b"x-request-id", request_id.encode("latin-1")),
                         (b"openai-processing-ms", str(elapsed).encode())]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _BodyTooLarge:
            if not response_started:
                await self._send_error(send, _too_large(limit), request_id, started)

    @staticmethod
    async def _send_error(send: Send, error: APIError, request_id: str, started: float) -> None:
        body = json.dumps(error.to_body()).encode()
        elapsed = int((time.perf_counter() - started) * 1000)
        await send({"type": "http.response.start", "status": error.status_code, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode("latin-1")),
            (b"openai-processing-ms", str(elapsed).encode()),
        ]})
        await send({"type": "http.response.body", "body": body})
