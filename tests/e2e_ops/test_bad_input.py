"""Hostile and malformed requests, on purpose: each gets the right status and the OpenAI
envelope, and the server stays healthy afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .conftest import MODEL, Server, assert_envelope, chat_body

pytestmark = pytest.mark.timeout(120)

URL = "/v1/chat/completions"


@pytest.fixture
def http(fuzz_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.url, timeout=60) as client:
        yield client
        health = client.get("/health")
        assert health.status_code == 200
        r = client.post(URL, json=chat_body(max_tokens=1))
        assert r.status_code == 200, r.text


def raw(http: httpx.Client, data: bytes) -> httpx.Response:
    return http.post(URL, content=data, headers={"content-type": "application/json"})


def test_body_too_large(http: httpx.Client) -> None:
    assert_envelope(http.post(URL, json=chat_body("x" * 5_000_000)), 413,
                    code="request_too_large")


@pytest.mark.parametrize("data", [b'{"model": "m", ', b"", b"[1, 2]", b"null", b"\xff\xfe"])
def test_not_a_json_object(http: httpx.Client, data: bytes) -> None:
    assert_envelope(raw(http, data), 400)


@pytest.mark.parametrize(("field", "value", "param"), [
    ("messages", "hi", "messages"),
    ("temperature", "hot", "temperature"),
    ("max_tokens", "x", "max_tokens"),
    ("n", 1.5, "n"),
    ("top_p", [1], "top_p"),
    ("stop", 7, "stop"),
    ("messages", [{"role": "user", "content": 5}], "messages[0].content"),
    ("messages", [{"role": "user", "content": [{"type": "text", "text": 1}]}],
     "messages[0].content[0].text"),
    ("stream_options", "yes", "stream_options"),
    ("seed", "abc", "seed"),
])
def test_wrong_types_name_the_param(http: httpx.Client, field: str, value: object,
                                    param: str) -> None:
    assert_envelope(http.post(URL, json=chat_body(**{field: value})), 400, param=param)


def test_empty_messages(http: httpx.Client) -> None:
    assert_envelope(http.post(URL, json=chat_body(messages=[])), 400, param="messages")


def test_unknown_role(http: httpx.Client) -> None:
    r = http.post(URL, json=chat_body(messages=[{"role": "robot", "content": "x"}]))
    assert_envelope(r, 400, param="messages[0].role")


def test_tool_message_without_tool_call_id(http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "x"}, {"role": "tool", "content": "42"}]
    r = http.post(URL, json=chat_body(messages=messages))
    assert_envelope(r, 400, param="messages[1].tool_call_id")


def test_n_above_the_configured_cap(http: httpx.Client) -> None:
    assert_envelope(http.post(URL, json=chat_body(n=3)), 400, param="n")


def test_logit_bias_with_hundreds_of_entries_works(http: httpx.Client) -> None:
    bias = {str(i): -1 for i in range(10, 700)}
    assert http.post(URL, json=chat_body(max_tokens=2, logit_bias=bias)).status_code == 200


@pytest.mark.parametrize("bias", [{"abc": 1}, {"-5": 1}, {"1": "x"}, {"1": 500},
                                  {"99999999": 1}])
def test_bad_logit_bias(http: httpx.Client, bias: dict) -> None:
    assert_envelope(http.post(URL, json=chat_body(logit_bias=bias)), 400, param="logit_bias")


def test_five_stop_strings(http: httpx.Client) -> None:
    r = http.post(URL, json=chat_body(stop=["a", "b", "c", "d", "e"]))
    assert_envelope(r, 400, param="stop")


def test_invalid_utf8(http: httpx.Client) -> None:
    data = b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"\xc3\x28"}]}'
    assert_envelope(raw(http, data), 400)


@pytest.mark.parametrize("stream", [False, True])
def test_lone_surrogate(http: httpx.Client, stream: bool) -> None:
    flag = "true" if stream else "false"
    data = ('{"model":"' + MODEL + '","stream":' + flag
            + ',"messages":[{"role":"user","content":"a\\ud800b"}]}').encode()
    assert_envelope(raw(http, data), 400)


def test_one_megabyte_message(http: httpx.Client) -> None:
    r = http.post(URL, json=chat_body("word " * 200_000))
    assert_envelope(r, 400, code="context_length_exceeded", param="messages")


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_content(http: httpx.Client, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    data = ('{"model":"' + MODEL + '","messages":[{"role":"user","content":' + nested
            + '}]}').encode()
    assert_envelope(raw(http, data), 400)
