"""GET /health: liveness plus the engine's counters (open even when keys are set).

503 when the engine thread has died: requests would then wait forever, so a load
balancer or supervisor must see the server as down.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chatd.api.context import context
from chatd.api.gatekeeper import engine_stopped

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    ctx = context(request)
    if not ctx.alive():
        return engine_stopped().to_response()
    return JSONResponse({"status": "ok", "model": ctx.model_name, "kv_cache": ctx.kv_cache,
                         "kv_layout": ctx.kv_layout,
                         "deterministic": ctx.deterministic, **ctx.stats()})
