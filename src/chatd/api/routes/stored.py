"""Stored chat completions, as OpenAI serves them: list, retrieve, update metadata,
delete, and list a completion's input messages.

Every route works within the caller's own completions (`storing.owner_of`): another
key's id is a 404, as if it did not exist. Pages are cursor-based: `after` is the id
of the last item of the previous page, and `has_more` says whether to ask again, which
is what the official client's auto-pagination follows.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from chatd.api.errors import APIError
from chatd.api.protocol import (
    ChatCompletionDeleted,
    ChatCompletionList,
    ChatCompletionMessageList,
    ChatCompletionUpdateRequest,
    StoredChatCompletion,
)
from chatd.api.storing import StoredItem, owner_of, storage_of

router = APIRouter()

LIMIT_MAX = 100
Order = Literal["asc", "desc"]
Limit = Annotated[int, Query(json_schema_extra={"minimum": 1, "maximum": LIMIT_MAX},
                             description="Items per page, 1 to 100.")]
After = Annotated[str | None, Query(description="The id of the last item of the previous "
                                                "page: this page starts after it.")]

_ERROR = {"content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}


def _documented(ok: type, what: str, *, bad_request: bool = True,
                not_found: bool = True) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {
        200: {"model": ok, "description": what},
        401: {"description": "Missing or wrong API key (code invalid_api_key).", **_ERROR}}
    if bad_request:
        responses[400] = {"description": "Invalid parameter.", **_ERROR}
    if not_found:
        responses[404] = {"description": "No stored chat completion of yours has this id.",
                          **_ERROR}
    return responses


_METADATA_FILTER = {"parameters": [{
    "name": "metadata", "in": "query", "required": False, "style": "deepObject",
    "explode": True, "description": "Only completions with these metadata pairs: "
                                    "`metadata[key1]=value1&metadata[key2]=value2`.",
    "schema": {"type": "object", "additionalProperties": {"type": "string"}}}]}


def _json(text: str) -> Response:
    return Response(text, media_type="application/json")


def _not_found(completion_id: str) -> APIError:
    return APIError.not_found(f"No stored chat completion found with id '{completion_id}'.")


def _check_limit(limit: int) -> None:
    """OpenAI's wording for a limit out of 1..100."""
    if limit < 1:
        raise APIError.bad_request(
            f"Invalid 'limit': integer below minimum value. Expected a value >= 1, but got "
            f"{limit} instead.", param="limit", code="invalid_value")
    if limit > LIMIT_MAX:
        raise APIError.bad_request(
            f"Invalid 'limit': integer above maximum value. Expected a value <= {LIMIT_MAX}, "
            f"but got {limit} instead.", param="limit", code="invalid_value")


def _bad_cursor(after: str, what: str) -> APIError:
    return APIError.bad_request(
        f"Invalid 'after': '{after}' is not the id of {what}. Pass the id of the last item "
        "of the previous page.", param="after", code="invalid_value")


def _metadata_filter(request: Request) -> dict[str, str]:
    """``metadata[key]=value`` query pairs (how the official client sends the filter)."""
    pairs = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            pairs[name[len("metadata["):-1]] = value
    return pairs


def _stored_json(item: StoredItem) -> str:
    """The completion's JSON as the POST returned it, with its current metadata
    spliced in (not parsed and re-serialised: a page can hold 100 large ones)."""
    return (item.completion[:-1] + ',"metadata":'
            + json.dumps(item.metadata, ensure_ascii=False, separators=(",", ":")) + "}")


def _page_json(data: list[str], first_id: str | None, last_id: str | None,
               has_more: bool) -> str:
    return ('{"object":"list","data":[' + ",".join(data) + '],"first_id":'
            + json.dumps(first_id) + ',"last_id":' + json.dumps(last_id)
            + ',"has_more":' + ("true" if has_more else "false") + "}")


@router.get("/v1/chat/completions", openapi_extra=_METADATA_FILTER,
            operation_id="listChatCompletions", summary="List stored chat completions",
            responses=_documented(ChatCompletionList, "A page of stored completions.",
                                  not_found=False))
async def list_completions(request: Request, after: After = None, limit: Limit = 20,
                           order: Order = "asc", model: str | None = None) -> Response:
    owner = owner_of(request)
    _check_limit(limit)
    storage = storage_of(request)
    page = None if storage is None else await storage.page(
        owner, after=after, limit=limit, order=order, model=model,
        metadata=_metadata_filter(request))
    if page is None:
        if after is not None:
            raise _bad_cursor(after, "one of your stored chat completions")
        page = ([], False)
    items, has_more = page
    return _json(_page_json([_stored_json(i) for i in items],
                            items[0].id if items else None,
                            items[-1].id if items else None, has_more))


@router.get("/v1/chat/completions/{completion_id}", operation_id="getChatCompletion",
            summary="Retrieve a stored chat completion",
            responses=_documented(StoredChatCompletion, "The stored completion.",
                                  bad_request=False))
async def get_completion(completion_id: str, request: Request) -> Response:
    owner = owner_of(request)
    storage = storage_of(request)
    item = None if storage is None else await storage.get(owner, completion_id)
    if item is None:
        raise _not_found(completion_id)
    return _json(_stored_json(item))


@router.post("/v1/chat/completions/{completion_id}", operation_id="updateChatCompletion",
             summary="Replace a stored chat completion's metadata",
             responses=_documented(StoredChatCompletion, "The updated completion."))
async def update_completion(completion_id: str, body: ChatCompletionUpdateRequest,
                            request: Request) -> Response:
    owner = owner_of(request)
    storage = storage_of(request)
    item = None if storage is None else await storage.set_metadata(
        owner, completion_id, body.metadata or {})
    if item is None:
        raise _not_found(completion_id)
    return _json(_stored_json(item))


@router.delete("/v1/chat/completions/{completion_id}", operation_id="deleteChatCompletion",
               summary="Delete a stored chat completion",
               responses=_documented(ChatCompletionDeleted, "It is deleted.",
                                     bad_request=False))
async def delete_completion(completion_id: str, request: Request) -> Response:
    owner = owner_of(request)
    storage = storage_of(request)
    if storage is None or not await storage.delete(owner, completion_id):
        raise _not_found(completion_id)
    return _json(ChatCompletionDeleted(id=completion_id).model_dump_json())


@router.get("/v1/chat/completions/{completion_id}/messages",
            operation_id="getChatCompletionMessages",
            summary="List a stored chat completion's input messages",
            responses=_documented(ChatCompletionMessageList, "A page of input messages."))
async def list_messages(completion_id: str, request: Request, after: After = None,
                        limit: Limit = 20, order: Order = "asc") -> Response:
    owner = owner_of(request)
    _check_limit(limit)
    storage = storage_of(request)
    messages = None if storage is None else await storage.messages(owner, completion_id)
    if messages is None:
        raise _not_found(completion_id)
    indexes = list(range(len(messages)))
    if order == "desc":
        indexes.reverse()
    ids = [f"{completion_id}-{i}" for i in indexes]
    start = 0
    if after is not None:
        if after not in ids:
            raise _bad_cursor(after, "a message of this completion")
        start = ids.index(after) + 1
    window = indexes[start:start + limit]
    data = [{"id": f"{completion_id}-{i}", **messages[i]} for i in window]
    return _json(json.dumps({
        "object": "list", "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(ids)}, ensure_ascii=False, separators=(",", ":")))
