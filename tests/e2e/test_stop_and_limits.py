"""stop sequences, max_tokens / max_completion_tokens and the context limit."""

from __future__ import annotations

import httpx
import openai
import pytest

from .conftest import (
    assert_error,
    assert_server_ok,
    check_stream_chunks,
    parse_sse_body,
    raw_stream_texts,
    sse_request,
)

LONG_PROMPT = "Write a long story about a dragon."

pytestmark = pytest.mark.timeout(120)

STOP_PROMPT = "Write two sentences about the ocean."
STOP_MAX = 40


@pytest.fixture(scope="module")
def stop_case(client: openai.OpenAI, model_id: str) -> tuple[str, str, str]:
    """(greedy text, stop string from its middle, text before the stop string)."""
    text = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": STOP_PROMPT}],
        max_tokens=STOP_MAX, temperature=0).choices[0].message.content
    words = text.split(" ")
    assert len(words) >= 6, f"greedy answer too short to cut a stop string from: {text!r}"
    # Two words from the middle: spans several tokens, and the output must not stop at
    # any earlier point. Skip candidates whose first occurrence is at the very start.
    for start in range(len(words) // 2 - 1, len(words) - 2):
        stop = " ".join(words[start:start + 2])
        idx = text.find(stop)
        if len(stop) >= 6 and idx > 0:
            return text, stop, text[:idx]
    pytest.fail(f"no usable stop string in {text!r}")


def test_stop_truncates_non_stream(client: openai.OpenAI, model_id: str,
                                   stop_case: tuple[str, str, str]) -> None:
    _, stop, prefix = stop_case
    resp = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": STOP_PROMPT}],
        max_tokens=STOP_MAX, temperature=0, stop=[stop])
    content = resp.choices[0].message.content
    assert stop not in content
    assert content == prefix, f"stop={stop!r}"
    assert resp.choices[0].finish_reason == "stop"


def test_stop_as_plain_string(client: openai.OpenAI, model_id: str,
                              stop_case: tuple[str, str, str]) -> None:
    _, stop, prefix = stop_case
    resp = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": STOP_PROMPT}],
        max_tokens=STOP_MAX, temperature=0, stop=stop)
    assert resp.choices[0].message.content == prefix
    assert resp.choices[0].finish_reason == "stop"


def test_stop_among_several(client: openai.OpenAI, model_id: str,
                            stop_case: tuple[str, str, str]) -> None:
    _, stop, prefix = stop_case
    resp = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": STOP_PROMPT}],
        max_tokens=STOP_MAX, temperature=0, stop=["zzqx", stop, "QQQQ", "@@@@"])
    assert resp.choices[0].message.content == prefix
    assert resp.choices[0].finish_reason == "stop"


def test_stop_truncates_stream(http: httpx.Client, model_id: str,
                               stop_case: tuple[str, str, str]) -> None:
    _, stop, prefix = stop_case
    r, body = sse_request(http, {
        "model": model_id, "messages": [{"role": "user", "content": STOP_PROMPT}],
        "max_tokens": STOP_MAX, "temperature": 0, "stop": [stop], "stream": True,
        "stream_options": {"include_usage": True}})
    assert r.status_code == 200, body
    chunks = parse_sse_body(body)
    finished = check_stream_chunks(chunks, include_usage=True)
    assert finished[0] == "stop"
    text = raw_stream_texts(chunks[:-1])[0]
    # Nothing of the stop string beyond the prefix may have been sent.
    assert text == prefix, f"stop={stop!r}"


def test_stop_five_strings_rejected(http: httpx.Client, model_id: str) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "stop": ["a", "b", "c", "d", "e"]})
    assert_error(r, 400)
    assert_server_ok(http, model_id)


def test_max_tokens_length(client: openai.OpenAI, model_id: str) -> None:
    resp = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": LONG_PROMPT}],
        max_tokens=5, temperature=0)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 5


@pytest.mark.parametrize(("max_tokens", "max_completion_tokens"), [(20, 6), (4, 7)])
def test_max_completion_tokens_wins(client: openai.OpenAI, model_id: str, max_tokens: int,
                                    max_completion_tokens: int) -> None:
    resp = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": LONG_PROMPT}],
        max_tokens=max_tokens, max_completion_tokens=max_completion_tokens, temperature=0)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == max_completion_tokens


def test_max_tokens_beyond_context(http: httpx.Client, model_id: str) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 100000})
    assert_error(r, 400, code="context_length_exceeded")
    assert_server_ok(http, model_id)


def test_max_completion_tokens_beyond_context(http: httpx.Client, model_id: str) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 100000})
    assert_error(r, 400, code="context_length_exceeded")


def test_prompt_beyond_context(http: httpx.Client, model_id: str) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": "hello " * 9000}],
        "max_tokens": 4})
    assert_error(r, 400, code="context_length_exceeded")
    assert_server_ok(http, model_id)


def test_context_error_before_stream_starts(http: httpx.Client, model_id: str) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 100000, "stream": True})
    assert_error(r, 400, code="context_length_exceeded")
