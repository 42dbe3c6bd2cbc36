"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer SSE streams).

- A body-size limit that answers 413 before a large body is read into memory.
- Headers on every response, errors and streams included: ``x-request-id`` (the
  client's, or a new one), ``openai-processing-ms`` (time to headers) and the
  ``x-ratelimit-*`` headers of the caller's key.
- The request's record (``tracking``): created here, and once the response is over
  turned into metrics and an access-log line, with the queue slot and token
  reservation settled whatever way the request ended.
- An unexpected exception before the response started becomes a 500 envelope that
  still carries the request id.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatd.api.accesslog import AccessLog
from chatd.api.errors import APIError
from chatd.api.metrics import Metrics
from chatd.api.tracking import STATE_KEY, RequestRecord, bind, unbind

log = logging.getLogger("chatd.api")

RateLimitHeaders = Callable[[str | None], list[tuple[bytes, bytes]]]
"""Key tag (None: unidentified caller) -> the ``x-ratelimit-*`` headers to send."""


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> APIError:
    return APIError.request_too_large(
        f"Request body too large: the limit is {limit} bytes. Send a shorter conversation.")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int,
                 rate_limit_headers: RateLimitHeaders | None = None,
                 metrics: Metrics | None = None, access_log: AccessLog | None = None,
                 known_routes: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.rate_limit_headers = rate_limit_headers
        self.metrics = metrics
        self.access_log = access_log
        self.known_routes = known_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or (
            "req_" + uuid.uuid4().hex)
        client = scope.get("client")
        record = RequestRecord(request_id=request_id, method=scope.get("method", ""),
                               path=scope.get("path", ""), metrics=self.metrics,
                               client=client[0] if client else None)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state[STATE_KEY] = record
        token = bind(record)
        try:
            await self._handle(scope, receive, send, record, headers)
        finally:
            unbind(token)
            record.end_generation()
            self._observe(scope, record)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, record: RequestRecord,
                      headers: dict[bytes, bytes]) -> None:
        limit = self.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._send_error(send, _too_large(limit), record)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                   *self._extra_headers(record)]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                record.completed = True
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _BodyTooLarge:
            if record.status is None:
                await self._send_error(send, _too_large(limit), record)
        except Exception:
            if record.status is not None:
                raise  # headers went out: nothing better to send than a torn response
            log.exception("unhandled error in %s %s", record.method, record.path)
            await self._send_error(send, APIError.internal(), record)

    def _extra_headers(self, record: RequestRecord) -> list[tuple[bytes, bytes]]:
        elapsed = int((time.perf_counter() - record.started) * 1000)
        extra = [(b"x-request-id", record.request_id.encode("latin-1")),
                 (b"openai-processing-ms", str(elapsed).encode())]
        if self.rate_limit_headers is not None:
            extra += self.rate_limit_headers(record.key)
        return extra

    async def _send_error(self, send: Send, error: APIError, record: RequestRecord) -> None:
        body = json.dumps(error.to_body()).encode()
        record.status = error.status_code
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()),
                   *((k.lower().encode("latin-1"), v.encode("latin-1"))
                     for k, v in error.headers.items()),
                   *self._extra_headers(record)]
        await send({"type": "http.response.start", "status": error.status_code,
                    "headers": headers})
        await send({"type": "http.response.body", "body": body})
        record.completed = True

    def _route(self, scope: Scope) -> str:
        """Matched route template; a bounded label set whatever paths clients try."""
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        return scope.get("path", "") if scope.get("path") in self.known_routes else "unmatched"

    def _observe(self, scope: Scope, record: RequestRecord) -> None:
        duration = time.perf_counter() - record.started
        route = self._route(scope)
        status = str(record.status) if record.status is not None else "none"
        if self.metrics is not None:
            method = record.method if record.method in _METHODS else "other"
            self.metrics.requests.labels(route, method, status).inc()
            self.metrics.http_duration.labels(route).observe(duration)
        if self.access_log is not None:
            try:
                self.access_log.write(record, route, duration)
            except Exception:  # a full disk must not fail requests
                log.exception("could not write the access log")
