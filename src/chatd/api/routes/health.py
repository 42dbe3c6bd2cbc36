"""GET /health: liveness plus the engine's counters (open even when keys are set)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chatd.api.context import context

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    ctx = context(request)
    return JSONResponse({"status": "ok", "model": ctx.model_name, **ctx.stats()})
