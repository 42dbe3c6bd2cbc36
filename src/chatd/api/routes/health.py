"""GET /health: liveness plus the engine's counters (open even when keys are set).

503 when the engine thread has died: requests would then wait forever, so a load
balancer or supervisor must see the server as down. In a deployment of several
replicas the counters are the deployment's (chatd.api.deployment).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chatd.api.context import ServerContext, context
from chatd.api.deployment import merge_health
from chatd.api.gatekeeper import engine_stopped

router = APIRouter()


def health_body(ctx: ServerContext) -> dict[str, Any]:
    """This server's (or replica's) own health, as one process reports it."""
    return {"status": "ok", "model": ctx.model_name, "kv_cache": ctx.kv_cache,
            "kv_layout": ctx.kv_layout, "deterministic": ctx.deterministic,
            "weights": ctx.weights, **ctx.stats()}


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    ctx = context(request)
    if not ctx.alive():
        return engine_stopped().to_response()
    body = health_body(ctx)
    if ctx.peers is not None:
        body = merge_health(ctx.peers.replica, body, ctx.peers.others())
    return JSONResponse(body)
