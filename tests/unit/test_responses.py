"""Responses without a model: items -> messages, and deltas -> events / objects."""

from __future__ import annotations

import pytest

from chatd.api.errors import APIError
from chatd.api.protocol_responses import CreateResponseRequest
from chatd.api.responses_input import (
    chat_request,
    check_supported,
    input_items,
    response_tools,
    to_messages,
)
from chatd.api.responses_output import ResponseBuilder, response_object
from chatd.chat.choice import ChoiceDelta
from chatd.chat.generation import UsageCount
from chatd.chat.toolcalls import ToolCallDelta

TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}}


def _builder(**body: object) -> ResponseBuilder:
    req = CreateResponseRequest.model_validate({"model": "m", "input": "x", **body})
    return ResponseBuilder(response_object(
        response_id="resp_1", created=1, model="m", status="in_progress", body=req,
        tools=response_tools(req.tools), previous_response_id=None, store=True))


def test_items_become_chat_messages() -> None:
    items = input_items([
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
    ])
    assert all(item["id"] for item in items)
    messages = to_messages(items, "be brief")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["c1", "c2"]
    req = CreateResponseRequest.model_validate({
        "model": "m", "input": "x", "max_output_tokens": 16, "tools": [TOOL],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "n", "schema": {}}}})
    chat = chat_request(req, messages, response_tools(req.tools))
    assert chat.max_completion_tokens == 16
    assert chat.tools is not None and chat.tools[0].function.name == "f"
    assert chat.response_format is not None and chat.response_format.type == "json_schema"


@pytest.mark.parametrize("body", [
    {"tools": [{"type": "web_search"}]},
    {"reasoning": {"effort": "low"}},
    {"input": [{"type": "reasoning"}]},
    {"truncation": "auto"},
    {"prompt_cache_retention": "24h"},
])
def test_unsupported_is_named(body: dict[str, object]) -> None:
    req = CreateResponseRequest.model_validate({"model": "m", "input": "x", **body})
    with pytest.raises(APIError) as err:
        check_supported(req)
        input_items(req.input)
        response_tools(req.tools)
    assert err.value.status_code == 400 and err.value.param


def test_text_then_call_events() -> None:
    b = _builder(tools=[TOOL])
    events = b.opening()
    events += b.feed(ChoiceDelta(0, content="Let me check."))
    events += b.feed(ChoiceDelta(0, tool_calls=[ToolCallDelta(0, "call_1", "f", '{"a"')]))
    events += b.feed(ChoiceDelta(0, content=" \n", tool_calls=[ToolCallDelta(0, None, None,
                                                                               ": 1}")]))
    usage = UsageCount(prompt_tokens=5, completion_tokens=7, cached_tokens=2)
    events += b.finish("tool_calls", usage)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"][1]["arguments"] == '{"a": 1}'
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 2
    assert events[0]["response"]["output"] == []


def test_length_is_incomplete() -> None:
    b = _builder()
    b.opening()
    b.feed(ChoiceDelta(0, content="abc"))
    events = b.finish("length", UsageCount(prompt_tokens=1, completion_tokens=16))
    assert events[-1]["type"] == "response.incomplete"
    response = events[-1]["response"]
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"


def _app() -> object:
    import types

    from chatd.api.app import create_app
    from chatd.config import Settings

    engine = types.SimpleNamespace(alive=lambda: True, stats=lambda: {})
    runtime = types.SimpleNamespace(settings=Settings(), engine=engine, chat=None,
                                    model_name="m", fingerprint="fp_x")
    return create_app(runtime)  # type: ignore[arg-type]


def test_openapi_documents_the_routes() -> None:
    doc = _app().openapi()  # type: ignore[attr-defined]
    paths = doc["paths"]
    for path in ("/v1/responses", "/v1/responses/{response_id}",
                 "/v1/responses/{response_id}/input_items",
                 "/v1/responses/{response_id}/cancel"):
        assert path in paths
    create = paths["/v1/responses"]["post"]
    assert "422" not in create["responses"] and "400" in create["responses"]
    assert "text/event-stream" in create["responses"]["200"]["content"]


async def test_without_a_store_storing_is_refused() -> None:
    import httpx

    transport = httpx.ASGITransport(app=_app())  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        for body, param in (({"store": True}, "store"), ({"background": True}, "background"),
                            ({"previous_response_id": "resp_x"}, "previous_response_id"),
                            ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
                            ({"input": [{"type": "computer_call"}]}, "input[0].type")):
            r = await http.post("/v1/responses", json={"model": "m", "input": "x", **body})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == param
        r = await http.get("/v1/responses/resp_x")
        assert r.status_code == 404
