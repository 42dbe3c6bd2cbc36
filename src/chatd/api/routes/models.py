"""GET /v1/models and /v1/models/{id}: the one model this server runs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chatd.api.context import context
from chatd.api.errors import APIError
from chatd.api.protocol import ModelCard, ModelList

router = APIRouter()


def _card(request: Request) -> ModelCard:
    ctx = context(request)
    projector = ctx.chat.projector
    return ModelCard(id=ctx.model_name, created=ctx.created, owned_by="chatd",
                     input_modalities=projector.modalities if projector else ["text"])


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    context(request).auth.check(request)
    body = ModelList(data=[_card(request)])
    return Response(body.to_json(), media_type="application/json")


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    context(request).auth.check(request)
    card = _card(request)
    if model_id != card.id:
        raise APIError.model_not_found(model_id)
    return Response(card.model_dump_json(), media_type="application/json")
