"""OpenAI error envelopes: validation messages/params, and the FastAPI handlers end to end."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from chatd.api.errors import (
    APIError,
    error_for_validation,
    install_error_handlers,
    render_param,
    sse_error_event,
)
from chatd.api.protocol import ChatCompletion, ChatCompletionRequest
from chatd.chat.errors import ChatRequestError

USER = {"role": "user", "content": "Hi"}
URL = "/v1/chat/completions"


def api_error(body: Any) -> APIError:
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate(body)
    return error_for_validation(exc.value)


def api_error_of(**kw: Any) -> APIError:
    body: dict[str, Any] = {"model": "m", "messages": [USER]}
    body.update(kw)
    return api_error(body)


# ---------------------------------------------------------------------------- APIError


def test_envelope_has_all_four_keys() -> None:
    body = APIError("boom").to_body()
    assert body == {"error": {"message": "boom", "type": "invalid_request_error",
                              "param": None, "code": None}}


@pytest.mark.parametrize(("err", "status", "type_", "code"), [
    (APIError.bad_request("x", param="n"), 400, "invalid_request_error", None),
    (APIError.invalid_api_key(), 401, "invalid_request_error", "invalid_api_key"),
    (APIError.model_not_found("gpt-x"), 404, "invalid_request_error", "model_not_found"),
    (APIError.context_length_exceeded("too long"), 400, "invalid_request_error",
     "context_length_exceeded"),
    (APIError.request_too_large(), 413, "invalid_request_error", "request_too_large"),
    (APIError.rate_limited(retry_after=2), 429, "requests", "rate_limit_exceeded"),
    (APIError.overloaded(), 503, "server_error", "server_overloaded"),
    (APIError.internal(), 500, "server_error", None),
    (APIError.unsupported_parameter("tools", "no tools"), 400, "invalid_request_error",
     "unsupported_parameter"),
])
def test_constructors(err: APIError, status: int, type_: str, code: str | None) -> None:
    assert (err.status_code, err.type, err.code) == (status, type_, code)
    assert set(err.to_body()["error"]) == {"message", "type", "param", "code"}
    assert err.message


def test_model_not_found_wording() -> None:
    err = APIError.model_not_found("gpt-x")
    assert err.message == "The model `gpt-x` does not exist or you do not have access to it."


def test_retry_after_header() -> None:
    assert APIError.rate_limited(retry_after=2.2).headers["Retry-After"] == "3"
    assert APIError.overloaded(retry_after=0.1).headers["Retry-After"] == "1"
    assert "Retry-After" not in APIError.overloaded().headers


def test_sse_error_event() -> None:
    frame = sse_error_event(APIError.internal())
    assert frame.startswith("data: ") and frame.endswith("\n\n")
    assert "\n" not in frame[:-2]
    payload = json.loads(frame[len("data: "):])
    assert payload["error"]["type"] == "server_error"
    assert set(payload["error"]) == {"message", "type", "param", "code"}


def test_render_param() -> None:
    assert render_param(["messages", 2, "content", 1]) == "messages[2].content[1]"
    assert render_param(["response_format", "json_schema", "name"]) == \
        "response_format.json_schema.name"
    assert render_param([]) is None


# ----------------------------------------------------------------- validation -> 400


def test_extra_field_message() -> None:
    err = api_error_of(foo=1)
    assert err.status_code == 400
    assert err.message == "Unrecognized request argument supplied: foo"
    assert err.param == "foo"


def test_missing_required() -> None:
    err = api_error({"model": "m"})
    assert err.message == "Missing required parameter: 'messages'."
    assert err.param == "messages"
    assert api_error({"messages": [USER]}).param == "model"


def test_empty_messages() -> None:
    err = api_error_of(messages=[])
    assert err.param == "messages"
    assert "empty array" in err.message


def test_top_logprobs_without_logprobs() -> None:
    err = api_error_of(top_logprobs=2)
    assert err.param == "top_logprobs"
    assert "logprobs" in err.message
    assert not err.message.startswith("Value error")


def test_stop_with_five_items() -> None:
    err = api_error_of(stop=["a", "b", "c", "d", "e"])
    assert err.param == "stop"
    assert "4" in err.message


@pytest.mark.parametrize("bias", [{"abc": 5}, {"28": 200}, {"28": -101}, {"28": "x"}])
def test_logit_bias(bias: dict[str, Any]) -> None:
    err = api_error_of(logit_bias=bias)
    assert (err.status_code, err.param) == (400, "logit_bias")


def test_temperature_out_of_range() -> None:
    err = api_error_of(temperature=3)
    assert err.param == "temperature"
    assert "<= 2" in err.message and "3" in err.message


def test_n_zero() -> None:
    err = api_error_of(n=0)
    assert err.param == "n"
    assert ">= 1" in err.message


def test_wrong_type_says_what_was_expected() -> None:
    err = api_error_of(temperature="hot")
    assert err.param == "temperature"
    assert "expected a number" in err.message and "string" in err.message
    err = api_error_of(stop=5)
    assert err.param == "stop"
    assert "a string or an array of strings" in err.message


def test_bad_content_part_param() -> None:
    err = api_error_of(messages=[USER, {"role": "user", "content": ["just a string"]}])
    assert err.param == "messages[1].content[0]"
    assert "expected an object" in err.message


def test_content_part_tag_names_do_not_leak_into_param() -> None:
    # "image_url" is both the part's tag and its field; the tag must not appear twice.
    err = api_error_of(messages=[USER, {"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"detail": "low"}}]}])
    assert err.param == "messages[1].content[1].image_url.url"
    err = api_error_of(messages=[{"role": "user", "content": [{"type": "text"}]}])
    assert err.param == "messages[0].content[0].text"
    assert "user" not in err.param and "list[" not in err.param


def test_bad_part_type_and_missing_role() -> None:
    err = api_error_of(messages=[USER, {"role": "user", "content": [{"type": "video"}]}])
    assert err.param == "messages[1].content[0].type"
    assert "'text'" in err.message
    err = api_error_of(messages=[{"content": "x"}])
    assert err.param == "messages[0].role"
    err = api_error_of(messages=[{"role": "robot", "content": "x"}])
    assert err.param == "messages[0].role"
    assert "robot" in err.message


def test_tool_message_without_tool_call_id() -> None:
    err = api_error_of(messages=[USER, {"role": "assistant", "content": "ok"},
                                 {"role": "tool", "content": "42"}])
    assert err.param == "messages[2].tool_call_id"
    assert err.message == "Missing required parameter: 'messages[2].tool_call_id'."


def test_nested_union_params() -> None:
    err = api_error_of(tool_choice={"type": "function", "function": {}})
    assert err.param == "tool_choice.function.name"
    err = api_error_of(tools=[{"type": "function", "function": {"name": "has space"}}])
    assert err.param == "tools[0].function.name"
    err = api_error_of(response_format={"type": "json_schema", "json_schema": {"name": "a b"}})
    assert err.param == "response_format.json_schema.name"
    err = api_error_of(messages=[USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f"}}]}])
    assert err.param == "messages[1].tool_calls[0].function.arguments"


def test_invalid_enum_value() -> None:
    err = api_error_of(tool_choice="sometimes")
    assert err.param == "tool_choice"
    assert "'auto'" in err.message


def test_body_not_an_object() -> None:
    err = api_error([1, 2, 3])
    assert (err.status_code, err.param) == (400, None)
    assert "JSON object" in err.message


# --------------------------------------------------------------- handlers, end to end


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post(URL)
    async def chat(body: ChatCompletionRequest) -> dict[str, str]:
        if body.model == "missing":
            raise APIError.model_not_found(body.model)
        if body.model == "chat-error":
            raise ChatRequestError("too long", param="messages", code="context_length_exceeded")
        if body.model == "crash":
            raise RuntimeError("secret internal detail")
        if body.model == "bad-response":
            ChatCompletion.model_validate({"id": "x"})  # a server bug, not the client's
        return {"ok": "yes"}

    return TestClient(app, raise_server_exceptions=False)


def assert_envelope(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_validation_is_400_not_422(client: TestClient) -> None:
    err = assert_envelope(client.post(URL, json={"model": "m", "messages": [USER],
                                                 "temperature": 5}), 400)
    assert err["param"] == "temperature"
    assert err["type"] == "invalid_request_error"
    err = assert_envelope(client.post(URL, json={"model": "m", "messages": [USER],
                                                 "foo": 1}), 400)
    assert err["message"] == "Unrecognized request argument supplied: foo"
    err = assert_envelope(client.post(URL, json={"model": "m", "messages": [
        USER, {"role": "user", "content": [{"type": "text", "text": "a"}, 7]}]}), 400)
    assert err["param"] == "messages[1].content[1]"


def test_malformed_json(client: TestClient) -> None:
    err = assert_envelope(client.post(URL, content=b'{"model": "m", "messages": [',
                                      headers={"Content-Type": "application/json"}), 400)
    assert err["message"].startswith("We could not parse the JSON body of your request")
    assert err["param"] is None


def test_json_not_an_object_and_empty_body(client: TestClient) -> None:
    assert_envelope(client.post(URL, content=b"[1, 2, 3]",
                                headers={"Content-Type": "application/json"}), 400)
    assert_envelope(client.post(URL), 400)


def test_api_error_passes_through(client: TestClient) -> None:
    err = assert_envelope(client.post(URL, json={"model": "missing", "messages": [USER]}), 404)
    assert err["code"] == "model_not_found"


def test_chat_request_error_is_400(client: TestClient) -> None:
    err = assert_envelope(client.post(URL, json={"model": "chat-error", "messages": [USER]}),
                          400)
    assert (err["param"], err["code"]) == ("messages", "context_length_exceeded")


def test_unknown_route_is_404_envelope(client: TestClient) -> None:
    for resp in (client.get("/v1/nope"), client.post("/v1/nope", json={})):
        err = assert_envelope(resp, 404)
        assert err["type"] == "invalid_request_error"
        assert "/v1/nope" in err["message"]


def test_wrong_method_is_405_envelope(client: TestClient) -> None:
    resp = client.get(URL)
    err = assert_envelope(resp, 405)
    assert err["type"] == "invalid_request_error"
    assert resp.headers.get("allow") == "POST"


def test_crash_is_500_without_traceback(client: TestClient,
                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="chatd.api"):
        resp = client.post(URL, json={"model": "crash", "messages": [USER]})
    err = assert_envelope(resp, 500)
    assert err["type"] == "server_error"
    assert "secret internal detail" not in resp.text
    assert "Traceback" not in resp.text and "RuntimeError" not in resp.text
    logged = [r for r in caplog.records if r.name == "chatd.api"]
    assert logged and logged[0].exc_info is not None  # the traceback goes to the log


def test_response_model_failure_is_500(client: TestClient) -> None:
    err = assert_envelope(client.post(URL, json={"model": "bad-response", "messages": [USER]}),
                          500)
    assert err["type"] == "server_error"
