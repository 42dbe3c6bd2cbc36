"""GET /metrics: Prometheus text format; open unless ``--metrics-require-key``. In a
deployment of several replicas, every replica's series, labelled (chatd.api.deployment)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chatd.api.context import context
from chatd.api.deployment import merge_metrics
from chatd.api.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    ctx = context(request)
    if ctx.metrics_require_key:
        ctx.auth.check(request)
    text = ctx.metrics.render()
    if ctx.peers is not None:
        parts = [(ctx.peers.replica, text.decode()),
                 *((p.replica, p.metrics) for p in ctx.peers.others())]
        text = merge_metrics(parts).encode()
    return Response(text, media_type=CONTENT_TYPE)
