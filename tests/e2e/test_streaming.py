"""Streaming: chunk sequence rules, usage chunk, exact SSE framing, stream == non-stream."""

from __future__ import annotations

import httpx
import openai
import pytest

from .conftest import (
    acollect_stream,
    check_stream_chunks,
    collect_stream,
    parse_sse_body,
    raw_stream_texts,
    sse_request,
    stream_texts,
)

pytestmark = pytest.mark.timeout(120)

PROMPT = "Describe the sun in one sentence."
MAX_TOKENS = 30
SEED = 7


def _sdk_chunks_as_dicts(chunks: list) -> list[dict]:
    # exclude_unset keeps the difference between a missing field and an explicit null.
    return [c.model_dump(exclude_unset=True) for c in chunks]


@pytest.fixture(scope="module")
def reference_text(client: openai.OpenAI, model_id: str) -> str:
    resp = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS, temperature=0, seed=SEED)
    text = resp.choices[0].message.content
    assert text
    return text


def test_raw_sse_framing_with_usage(http: httpx.Client, model_id: str,
                                    reference_text: str) -> None:
    r, body = sse_request(http, {
        "model": model_id, "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS, "temperature": 0, "seed": SEED, "stream": True,
        "stream_options": {"include_usage": True}})
    assert r.status_code == 200, body
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = parse_sse_body(body)
    finished = check_stream_chunks(chunks, n=1, include_usage=True)
    text = raw_stream_texts(chunks[:-1])[0]
    assert text == reference_text
    usage = chunks[-1]["usage"]
    if finished[0] == "length":
        assert usage["completion_tokens"] == MAX_TOKENS
    assert 0 < usage["completion_tokens"] <= MAX_TOKENS
    # Every chunk of one stream names the model that answered.
    assert chunks[0]["model"] == model_id


def test_raw_sse_without_usage(http: httpx.Client, model_id: str,
                               reference_text: str) -> None:
    r, body = sse_request(http, {
        "model": model_id, "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS, "temperature": 0, "seed": SEED, "stream": True})
    assert r.status_code == 200, body
    chunks = parse_sse_body(body)
    check_stream_chunks(chunks, n=1, include_usage=False)
    assert all(c.get("usage") is None for c in chunks)
    assert raw_stream_texts(chunks)[0] == reference_text


def test_stream_chosen_by_body_not_accept_header(http: httpx.Client, model_id: str) -> None:
    # The SDK sends Accept: application/json even for streams.
    r, body = sse_request(http, {
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "stream": True}, headers={"Accept": "application/json"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    check_stream_chunks(parse_sse_body(body))


def test_sync_sdk_stream_with_usage(client: openai.OpenAI, model_id: str,
                                    reference_text: str) -> None:
    stream = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS, temperature=0, seed=SEED, stream=True,
        stream_options={"include_usage": True})
    chunks = collect_stream(stream)
    check_stream_chunks(_sdk_chunks_as_dicts(chunks), n=1, include_usage=True)
    assert stream_texts(chunks)[0] == reference_text
    usage = chunks[-1].usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_sync_sdk_stream_without_usage(client: openai.OpenAI, model_id: str,
                                       reference_text: str) -> None:
    chunks = collect_stream(client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS, temperature=0, seed=SEED, stream=True))
    check_stream_chunks(_sdk_chunks_as_dicts(chunks), n=1, include_usage=False)
    assert all(c.usage is None for c in chunks)
    assert stream_texts(chunks)[0] == reference_text


async def test_async_sdk_stream(aclient: openai.AsyncOpenAI, model_id: str,
                                reference_text: str) -> None:
    stream = await aclient.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS, temperature=0, seed=SEED, stream=True,
        stream_options={"include_usage": True})
    chunks = await acollect_stream(stream)
    check_stream_chunks(_sdk_chunks_as_dicts(chunks), n=1, include_usage=True)
    assert stream_texts(chunks)[0] == reference_text


async def test_async_non_stream_matches(aclient: openai.AsyncOpenAI, model_id: str,
                                        reference_text: str) -> None:
    resp = await aclient.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS, temperature=0, seed=SEED)
    assert resp.choices[0].message.content == reference_text


def test_stream_length_finish(http: httpx.Client, model_id: str) -> None:
    r, body = sse_request(http, {
        "model": model_id,
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 6, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    chunks = parse_sse_body(body)
    finished = check_stream_chunks(chunks, include_usage=True)
    assert finished[0] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 6
