"""The FastAPI application: routes, error envelopes, middleware, lifecycle."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import FastAPI

from chatd import __version__
from chatd.api.auth import KeyChecker
from chatd.api.context import ServerContext
from chatd.api.errors import install_error_handlers
from chatd.api.middleware import RequestContextMiddleware
from chatd.api.routes import chat, health, models

if TYPE_CHECKING:
    from chatd.server import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(title="chatd", version=__version__,
                  description="OpenAI-compatible Chat Completions on a local model.")
    app.state.ctx = ServerContext(
        chat=runtime.chat,
        stats=runtime.engine.stats,
        model_name=runtime.model_name,
        fingerprint=runtime.fingerprint,
        created=int(time.time()),
        auth=KeyChecker(runtime.settings.api_keys),
    )
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=runtime.settings.max_body_bytes)
    return app
