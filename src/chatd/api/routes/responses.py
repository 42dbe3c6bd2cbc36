"""The Responses API: create (JSON, SSE or background), retrieve, delete, list a
response's input items, cancel a background one.

A Responses request becomes a chat request (`chatd.api.responses_input`) and runs
on the same chat service, admission gate and limits as ``/v1/chat/completions``.
Responses are stored by default (``store`` defaults to true, as OpenAI's), in the
same database as stored chat completions, and belong to the API key that created
them: another key's id is a 404. ``previous_response_id`` continues from the stored
context of the earlier response (its input and output), so a conversation survives
a restart and works from any replica sharing the database.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from chatd.api.context import context
from chatd.api.disconnect import ClientGone, unless_disconnected
from chatd.api.errors import APIError
from chatd.api.protocol_responses import CreateResponseRequest
from chatd.api.ratelimit import Reservation
from chatd.api.responses_input import (
    chat_request,
    check_supported,
    input_items,
    new_id,
    response_tools,
    to_messages,
)
from chatd.api.responses_output import ResponseBuilder, response_object
from chatd.api.responses_run import STALE_S, Background, Saving, complete, stream
from chatd.api.serving import CLIENT_CLOSED_REQUEST, checked, respond
from chatd.api.storing import ResponseStorage, owner_of, response_storage_of
from chatd.api.tracking import record_of
from chatd.chat.service import ChatService

router = APIRouter()

LIMIT_MAX = 100
_FINAL = ("completed", "incomplete", "failed", "cancelled")
_ERROR = {"content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
_RESPONSE_SCHEMA = {"type": "object", "required": ["id", "object", "created_at", "status",
                                                   "model", "output"],
                    "properties": {"id": {"type": "string"}, "object": {"const": "response"},
                                   "status": {"type": "string"},
                                   "output": {"type": "array"}}}


def _documented(what: str, schema: dict[str, Any], *, stream: bool = False,
                bad_request: bool = True) -> dict[int | str, dict[str, Any]]:
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    responses: dict[int | str, dict[str, Any]] = {
        200: {"description": what, "content": content},
        401: {"description": "Missing or wrong API key (code invalid_api_key).", **_ERROR},
        404: {"description": "No stored response of yours has this id (or unknown model).",
              **_ERROR}}
    if bad_request:
        responses[400] = {"description": "Invalid or unsupported parameter.", **_ERROR}
    return responses


def _json(data: Any) -> Response:
    if not isinstance(data, str):
        data = json.dumps(data, separators=(",", ":"))
    return Response(data, media_type="application/json")


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"cache-control": "no-cache"})


def _not_found(response_id: str) -> APIError:
    return APIError.not_found(f"No response found with id '{response_id}'.")


def _background(request: Request) -> Background:
    registry = getattr(request.app.state, "background_responses", None)
    if registry is None:
        registry = request.app.state.background_responses = Background()
    return registry


def _storage(request: Request, body: CreateResponseRequest) -> ResponseStorage | None:
    """The store when this response is kept: ``store`` defaults to true; on a server
    that keeps nothing a default is a no, and an explicit ask is a 400."""
    storage = response_storage_of(request)
    if body.store is False:
        if body.background:
            raise APIError.bad_request("background responses must be stored: send "
                                       "'store: true' (the default) with 'background'.",
                                       param="store", code="invalid_value")
        return None
    if storage is None and (body.store or body.background or body.previous_response_id):
        param = "store" if body.store else (
            "background" if body.background else "previous_response_id")
        raise APIError.unsupported_parameter(
            param, "This server does not store responses (it was started with --store "
                   f"off), so '{param}' cannot be served.")
    return storage


async def _earlier(request: Request, body: CreateResponseRequest, owner: str
                   ) -> list[dict[str, Any]]:
    """The context `previous_response_id` continues: its input items and output."""
    if body.previous_response_id is None:
        return []
    storage = response_storage_of(request)
    found = None if storage is None else await storage.get_response(
        owner, body.previous_response_id)
    if found is None:
        raise APIError(f"Previous response with id '{body.previous_response_id}' not found.",
                       status_code=404, param="previous_response_id",
                       code="previous_response_not_found")
    earlier = json.loads(found.response)
    if found.status not in ("completed", "incomplete"):
        raise APIError.bad_request(
            f"Previous response '{found.id}' is {found.status}; only a completed or "
            "incomplete response can be continued.", param="previous_response_id",
            code="invalid_value")
    return [*found.context, *earlier["output"]]


@router.post("/v1/responses", operation_id="createResponse", summary="Create a response",
             responses=_documented("A Response (JSON), or with `stream: true` an SSE stream "
                                   "of Responses events.", _RESPONSE_SCHEMA, stream=True))
async def create_response(body: CreateResponseRequest, request: Request) -> Response:
    owner = owner_of(request)  # 401 first
    check_supported(body)
    storage = _storage(request, body)
    context_items = await _earlier(request, body, owner)
    own = input_items(body.input)
    if not own and not context_items:
        raise APIError.bad_request("Missing required parameter: 'input'.", param="input",
                                   code="missing_required_parameter")
    tools = response_tools(body.tools)
    chat = chat_request(body, to_messages([*context_items, *own], body.instructions), tools)
    ctx, prepared = await checked(request, chat, ChatService.prepare)
    response_id = new_id("resp")
    created = int(time.time())
    builder = ResponseBuilder(response_object(
        response_id=response_id, created=created, model=ctx.model_name,
        status="queued" if body.background else "in_progress", body=body, tools=tools,
        previous_response_id=body.previous_response_id, store=storage is not None))
    saving = None if storage is None else Saving(storage, owner, own, [*context_items, *own])
    if body.background:
        assert saving is not None
        reservation = _reserve_tokens(request, prepared)  # 429 before anything is stored
        try:
            await saving.insert(builder.response)
        except APIError:
            if reservation is not None:
                reservation.cancel()
            raise
        run = _background(request).start(ctx, prepared, builder, saving, reservation)
        if body.stream:
            return _sse(run.follow(-1))
        return _json(run.events[0]["response"])
    if body.stream:
        try:
            await unless_disconnected(request.receive, ctx.gate.admit(request, prepared))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it: for logs
        return _sse(stream(ctx, prepared, builder, saving))

    async def whole() -> Response:
        return _json(await complete(ctx, prepared, builder, saving))

    return await respond(ctx, request, prepared, stream=False, events=_no_events,
                         complete=whole)


def _reserve_tokens(request: Request, prepared: Any) -> Reservation | None:
    """A background response's tokens-per-minute share, taken now (429 if the key has
    none left) and handed to the task, which settles it when the generation ends: the
    request's own record would settle it at once, at zero tokens."""
    ctx = context(request)
    record = record_of(request)
    reservation, record.reservation = record.reservation, None
    if reservation is not None:
        try:
            ctx.gate.limiter.reserve_tokens(reservation, prepared.token_budget,
                                            prompt_tokens=prepared.prompt_tokens)
        except APIError:
            ctx.gate.metrics.rate_limited.labels("tokens").inc()
            record.reservation = reservation  # refused: the record settles it
            raise
    return reservation


async def _no_events() -> Any:  # pragma: no cover - respond(stream=False) never calls it
    raise AssertionError("not streamed")
    yield


async def _stored(request: Request, response_id: str) -> tuple[ResponseStorage, str, Any]:
    owner = owner_of(request)
    storage = response_storage_of(request)
    found = None if storage is None else await storage.get_response(owner, response_id)
    if storage is None or found is None:
        raise _not_found(response_id)
    if (found.status not in _FINAL and found.heartbeat is not None
            and time.time() - found.heartbeat > STALE_S
            and response_id not in _background(request).tasks):
        await _lost(storage, owner, found)
        found = await storage.get_response(owner, response_id)
        if found is None:
            raise _not_found(response_id)
    return storage, owner, found


async def _lost(storage: ResponseStorage, owner: str, found: Any) -> None:
    """The server running this background response stopped beating (killed, or its
    machine gone): it will never finish, so it is failed, not left in_progress."""
    response = json.loads(found.response)
    response["status"] = "failed"
    response["error"] = {"code": "server_error", "message": (
        "The server running this background response stopped before it finished.")}
    await storage.update_response(owner, found.id, status="failed",
                                  response=json.dumps(response))


@router.get("/v1/responses/{response_id}", operation_id="getResponse",
            summary="Retrieve a stored response",
            responses=_documented("The stored response, or with `stream=true` the events "
                                  "of a background response.", _RESPONSE_SCHEMA,
                                  stream=True))
async def get_response(response_id: str, request: Request,
                       stream: bool | None = None, starting_after: int | None = None,
                       include_obfuscation: bool | None = None,
                       include: Annotated[list[str] | None, Query(alias="include[]")] = None,
                       ) -> Response:
    _, _, found = await _stored(request, response_id)
    if stream:
        run = _background(request).runs.get(response_id)
        if run is None:
            raise APIError.unsupported_parameter(
                "stream", "Only a background response running on this server (or ended "
                          "in the last 5 minutes) can be streamed; retrieve this one "
                          "without 'stream'.")
        return _sse(run.follow(-1 if starting_after is None else starting_after))
    if include:
        raise APIError.unsupported_parameter("include", "include values are not supported "
                                                        "by this server.")
    return _json(found.response)


@router.delete("/v1/responses/{response_id}", operation_id="deleteResponse",
               summary="Delete a stored response",
               responses=_documented("It is deleted.", {
                   "type": "object", "required": ["id", "object", "deleted"]},
                   bad_request=False))
async def delete_response(response_id: str, request: Request) -> Response:
    storage, owner, _ = await _stored(request, response_id)
    await _background(request).cancel(response_id)
    if not await storage.delete_response(owner, response_id):
        raise _not_found(response_id)
    return _json({"id": response_id, "object": "response", "deleted": True})


@router.post("/v1/responses/{response_id}/cancel", operation_id="cancelResponse",
             summary="Cancel a background response",
             responses=_documented("The response, cancelled (or already final).",
                                   _RESPONSE_SCHEMA))
async def cancel_response(response_id: str, request: Request) -> Response:
    storage, owner, found = await _stored(request, response_id)
    response = json.loads(found.response)
    if not response.get("background"):
        raise APIError.bad_request("Only responses created with 'background: true' can be "
                                   "cancelled.", param="response_id", code="invalid_value")
    if found.status not in _FINAL and not await _background(request).cancel(response_id):
        # Not running here (another replica, or a server restarted meanwhile): mark it.
        response["status"] = "cancelled"
        await storage.update_response(owner, response_id, status="cancelled",
                                      response=json.dumps(response))
    _, _, found = await _stored(request, response_id)
    return _json(found.response)


@router.get("/v1/responses/{response_id}/input_items", operation_id="listInputItems",
            summary="List a stored response's input items",
            responses=_documented("A page of input items.", {
                "type": "object", "required": ["object", "data", "has_more"]}))
async def list_input_items(
        response_id: str, request: Request,
        after: Annotated[str | None, Query(description="Item id: the page starts after "
                                                       "it.")] = None,
        limit: Annotated[int, Query(json_schema_extra={"minimum": 1,
                                                       "maximum": LIMIT_MAX})] = 20,
        order: Literal["asc", "desc"] = "desc",
        include: Annotated[list[str] | None, Query(alias="include[]")] = None,
) -> Response:
    _, _, found = await _stored(request, response_id)
    if not 1 <= limit <= LIMIT_MAX:
        raise APIError.bad_request(f"Invalid 'limit': expected a value from 1 to {LIMIT_MAX}, "
                                   f"but got {limit} instead.", param="limit",
                                   code="invalid_value")
    if include:
        raise APIError.unsupported_parameter("include", "include values are not supported "
                                                        "by this server.")
    items = list(found.input_items)
    if order == "desc":
        items.reverse()
    start = 0
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise APIError.bad_request(f"Invalid 'after': '{after}' is not an input item of "
                                       "this response.", param="after", code="invalid_value")
        start = ids.index(after) + 1
    page = items[start:start + limit]
    return _json({"object": "list", "data": page,
                  "first_id": page[0]["id"] if page else None,
                  "last_id": page[-1]["id"] if page else None,
                  "has_more": start + limit < len(items)})
