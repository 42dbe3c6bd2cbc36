"""GET /metrics: Prometheus text format; open unless ``--metrics-require-key``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chatd.api.context import context
from chatd.api.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    ctx = context(request)
    if ctx.metrics_require_key:
        ctx.auth.check(request)
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)
