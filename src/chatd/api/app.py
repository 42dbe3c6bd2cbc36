"""The FastAPI application: routes, error envelopes, middleware, lifecycle."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chatd import __version__
from chatd.api.accesslog import AccessLog
from chatd.api.admission import AdmissionGate
from chatd.api.auth import KeyChecker
from chatd.api.context import ServerContext
from chatd.api.errors import APIError, install_error_handlers
from chatd.api.gatekeeper import Gatekeeper
from chatd.api.metrics import Metrics
from chatd.api.middleware import RequestContextMiddleware
from chatd.api.openapi import install_openapi
from chatd.api.ratelimit import RateLimiter
from chatd.api.routes import chat, completions, health, metrics, models, responses, stored
from chatd.api.storing import CompletionStorage
from chatd.chat.service import ChatService
from chatd.config import Settings


class EngineView(Protocol):
    """The engine as the HTTP layer sees it: counters and liveness, nothing to drive."""

    def stats(self) -> dict[str, int | float]: ...

    def alive(self) -> bool: ...


class Backend(Protocol):
    """What the app is built from; `chatd.server.Runtime` is one. A protocol, so that
    the HTTP layer depends on the layers below it and never on the start-up wiring."""

    settings: Settings
    chat: ChatService
    model_name: str
    fingerprint: str

    @property
    def engine(self) -> EngineView: ...


async def _unencodable_text(request: Request, exc: Exception) -> JSONResponse:
    """JSON may escape a lone UTF-16 surrogate (``"\\ud800"``), which no UTF-8 text can
    hold; it surfaces only when the text is encoded for the tokenizer. The client sent
    it, so it is the client's 400, not a 500."""
    return APIError.bad_request(
        "The request contains a string that is not valid Unicode (an unpaired UTF-16 "
        "surrogate escape such as \\ud800). Send text as valid UTF-8.",
        code="invalid_value").to_response()


def _lifespan(store: CompletionStorage | None) -> Callable[[FastAPI], Any]:
    """The store connects on the server's own loop (its connections belong to it) and
    closes after the last response, once every write still running has finished."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if store is not None:
            await store.start()
        try:
            yield
        finally:
            running = getattr(app.state, "background_responses", None)
            if running is not None:  # background Responses: cancelled, status written
                await running.close()
            if store is not None:
                await store.close()

    return lifespan


def create_app(runtime: Backend) -> FastAPI:
    settings = runtime.settings
    # Stored completions (`store: true`): None with --store off, and in bare test apps.
    store: CompletionStorage | None = getattr(runtime, "store", None)
    app = FastAPI(title="chatd", version=__version__, lifespan=_lifespan(store),
                  description="OpenAI-compatible Chat Completions on a local model.")
    auth = KeyChecker(settings.api_keys)
    # A cluster replica brings limits shared by the whole deployment (chatd.cluster.limits).
    limiter: RateLimiter = getattr(runtime, "limiter", None) or RateLimiter(
        settings.requests_per_minute, settings.tokens_per_minute)
    admission = AdmissionGate(settings.max_sequences, max_queue=settings.max_queue,
                              max_wait=settings.max_queue_wait)
    meters = Metrics(runtime.engine.stats, lambda: (admission.depth, admission.in_use))
    alive: Callable[[], bool] = runtime.engine.alive  # a dead engine thread: /health says so
    gate = Gatekeeper(limiter, admission, meters, auth_enabled=auth.enabled, alive=alive)
    app.state.ctx = ServerContext(
        chat=runtime.chat,
        stats=runtime.engine.stats,
        model_name=runtime.model_name,
        fingerprint=runtime.fingerprint,
        created=int(time.time()),
        auth=auth,
        gate=gate,
        metrics=meters,
        metrics_require_key=settings.metrics_require_key,
        alive=alive,
        kv_cache=settings.kv_cache,
        deterministic=settings.deterministic,
        kv_layout=getattr(runtime, "kv_layout", "unified"),
        weights=getattr(runtime, "weights", "unknown"),
        peers=getattr(runtime, "peers", None),
    )
    install_error_handlers(app)
    app.add_exception_handler(UnicodeEncodeError, _unencodable_text)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(stored.router)
    app.include_router(responses.router)
    app.state.store = store
    install_openapi(app)
    app.add_middleware(
        RequestContextMiddleware, max_body_bytes=settings.max_body_bytes,
        rate_limit_headers=lambda key: limiter.headers(gate.bucket_key(key)),
        metrics=meters,
        access_log=AccessLog(settings.access_log) if settings.access_log else None,
        known_routes=frozenset(getattr(r, "path", "") for r in app.routes),
    )
    return app
