"""The load generator's arithmetic and stream parsing, which every benchmark number rests on."""

from __future__ import annotations

import json
import random

import httpx
import numpy as np
import pytest

from chatd.bench import loadgen
from chatd.bench.loadgen import (
    LoadResult,
    RequestResult,
    SSEDecoder,
    SSEEvent,
    apply_event,
    build_payload,
    interpret_chunk,
    normalise_base_url,
    percentile,
    run_load,
)

# ---- percentile ---------------------------------------------------------------------


def test_percentile_matches_numpy_linear() -> None:
    rng = random.Random(7)
    for n in (1, 2, 3, 10, 101):
        values = [rng.uniform(0, 5) for _ in range(n)]
        for q in (0, 1, 10, 25, 50, 75, 90, 99, 100):
            assert percentile(values, q) == pytest.approx(np.percentile(values, q), abs=1e-12)


def test_percentile_known_values_and_order_independence() -> None:
    assert percentile([3, 1, 2], 50) == 2
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20], 90) == pytest.approx(19.0)
    assert percentile([5.0], 90) == 5.0
    assert percentile(iter([4, 1, 3, 2]), 0) == 1
    assert percentile([4, 1, 3, 2], 100) == 4


def test_percentile_empty_is_none_and_bad_q_raises() -> None:
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        percentile([1.0], -1)


# ---- SSE decoding -------------------------------------------------------------------


STREAM = (
    ": keep-alive comment\n\n"
    'data: {"a": 1}\n\n'
    "data:no-space\r\n\r\n"
    "event: error\r\n"
    'data: {"error": {"message": "boom"}}\r\n\r\n'
    "data: line one\n"
    "data: line two\n"
    "id: 7\n"
    "retry: 100\n\n"
    "data: [DONE]\r\r"
)
EXPECTED = [
    SSEEvent('{"a": 1}'),
    SSEEvent("no-space"),
    SSEEvent('{"error": {"message": "boom"}}', event="error"),
    SSEEvent("line one\nline two"),
    SSEEvent("[DONE]"),
]


def test_sse_whole_stream() -> None:
    dec = SSEDecoder()
    assert dec.feed(STREAM) + dec.close() == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13])
def test_sse_any_chunking_gives_the_same_events(size: int) -> None:
    """Network reads cut anywhere, including between the CR and LF of a CRLF."""
    dec = SSEDecoder()
    events: list[SSEEvent] = []
    for i in range(0, len(STREAM), size):
        events += dec.feed(STREAM[i : i + size])
    events += dec.close()
    assert events == EXPECTED


def test_sse_split_crlf_is_one_line_end() -> None:
    dec = SSEDecoder()
    assert dec.feed("data: x\r") == []
    assert dec.feed("\n") == []  # the LF completes the CRLF, it is not a blank line
    assert dec.feed("\r\n") == [SSEEvent("x")]


def test_sse_close_delivers_unterminated_event_and_event_type_resets() -> None:
    dec = SSEDecoder()
    assert dec.feed("event: error\n\n") == []  # no data: nothing dispatched, type reset
    assert dec.feed("data: tail") == []
    assert dec.close() == [SSEEvent("tail")]


# ---- chunk interpretation -------------------------------------------------------------


def _chunk(content: str | None = None, finish: str | None = None, usage: int | None = None) -> str:
    delta = {} if content is None else {"content": content}
    obj: dict = {"object": "chat.completion.chunk", "choices": []}
    if usage is None:
        obj["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    else:
        obj["usage"] = {"prompt_tokens": 5, "completion_tokens": usage, "total_tokens": 5 + usage}
    return json.dumps(obj)


def test_interpret_chunk_kinds() -> None:
    assert interpret_chunk("[DONE]").done
    assert interpret_chunk(_chunk("hi")).content == "hi"
    role_only = json.dumps({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    assert interpret_chunk(role_only).content == ""
    assert interpret_chunk(_chunk(finish="length")).finish_reason == "length"
    assert interpret_chunk(_chunk(usage=128)).completion_tokens == 128
    assert "boom" in (interpret_chunk('{"error": {"message": "boom"}}').error or "")
    assert interpret_chunk('{"message": "x"}', event="error").error
    assert interpret_chunk("not json").error
    assert interpret_chunk("[1, 2]").error


def test_apply_event_ttft_itl_and_usage() -> None:
    """TTFT counts to the first non-empty content; ITL is the gap between content chunks."""
    res = RequestResult(client=0, index=0, start=10.0)
    role = json.dumps({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    timeline = [
        (10.05, role),
        (10.25, _chunk("a")),
        (10.30, _chunk("b")),
        (10.30, _chunk("c")),  # same network read: a zero gap
        (10.45, _chunk("d")),
        (10.46, _chunk(finish="length")),
        (10.46, _chunk(usage=4)),
    ]
    for now, data in timeline:
        assert not apply_event(res, SSEEvent(data), now)
    assert apply_event(res, SSEEvent("[DONE]"), 10.47)
    assert res.ttft == pytest.approx(0.25)
    assert res.itls == pytest.approx([0.05, 0.0, 0.15])
    assert res.content_chunks == 4
    assert res.completion_tokens == 4 and res.usage_reported
    assert res.finish_reason == "length"
    assert res.error is None


def test_apply_event_without_usage_counts_chunks() -> None:
    res = RequestResult(client=0, index=0, start=0.0)
    for i in range(3):
        apply_event(res, SSEEvent(_chunk("x")), 0.1 * (i + 1))
    assert res.completion_tokens == 3 and not res.usage_reported


# ---- aggregation -----------------------------------------------------------------------


def _req(start: float, end: float, tokens: int, ttft: float, itls: list[float],
         error: str | None = None) -> RequestResult:
    return RequestResult(client=0, index=0, start=start, end=end, ttft=ttft, itls=itls,
                         completion_tokens=tokens, error=error)


def test_load_result_aggregates() -> None:
    reqs = [
        _req(0.0, 2.0, 100, 0.1, [0.01, 0.02]),
        _req(0.5, 4.0, 100, 0.3, [0.03, 0.04]),
        _req(1.0, 1.5, 50, 9.9, [9.9], error="HTTP 500: oops"),
    ]
    lr = LoadResult(url="u", model="m", concurrency=2, max_tokens=100, stream=True, wall_s=4.0,
                    requests=reqs)
    assert lr.errors == 1 and lr.error_sample == "HTTP 500: oops"
    assert lr.completion_tokens == 200  # failed requests do not count
    assert lr.tokens_per_s == pytest.approx(50.0)
    assert lr.ttft(50) == pytest.approx(0.2)
    assert lr.itl(50) == pytest.approx(0.025)  # pooled gaps of the good requests only
    assert lr.short_requests == 0
    summary = lr.summary()
    assert summary["ok"] == 2 and summary["tokens_per_s"] == 50.0
    json.dumps(lr.to_dict(include_requests=True))


def test_url_and_payload() -> None:
    assert normalise_base_url("localhost:8000") == "http://localhost:8000/v1"
    assert normalise_base_url("http://h:1/v1/") == "http://h:1/v1"
    assert normalise_base_url("http://h:1/v1/chat/completions") == "http://h:1/v1"
    body = build_payload("m", "hi", 16, seed=3, ban_tokens=[0, 1, 2])
    assert body["logit_bias"] == {"0": -100, "1": -100, "2": -100}
    assert body["stream_options"] == {"include_usage": True} and body["seed"] == 3
    assert "stream_options" not in build_payload("m", "hi", 16, stream=False)


# ---- the closed loop over a fake transport ------------------------------------------------


async def test_run_load_against_fake_server() -> None:
    seen: list[dict] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "fake"}]})
        body = json.loads(request.content)
        seen.append(body)
        n = body["max_tokens"]
        if body["seed"] == 1234 + 10000 + 1:  # client 1's second request fails
            return httpx.Response(503, json={"error": {"message": "busy"}})
        lines = [_chunk("tok") for _ in range(n)] + [_chunk(finish="length"), _chunk(usage=n)]
        text = "".join(f"data: {line}\n\n" for line in lines) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    result = await run_load("http://fake", None, 2, requests_per_client=3, max_tokens=8,
                            ban_tokens=[0, 1, 2], transport=httpx.MockTransport(handler))
    assert result.model == "fake"
    assert len(result.requests) == 6 and result.errors == 1
    assert "HTTP 503" in (result.error_sample or "")
    assert result.completion_tokens == 5 * 8 and result.short_requests == 0
    assert result.warmup_error is None
    assert len(seen) == 7  # warm-up + 6
    assert seen[0]["max_tokens"] == 8  # warm-up is min(max_tokens, 16)
    assert len({b["seed"] for b in seen}) == 7
    assert all(b["logit_bias"] == {"0": -100, "1": -100, "2": -100} for b in seen)
    assert result.ttft(50) is not None and result.itl(50) is not None


def test_cli_arguments_parse() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    loadgen.add_arguments(parser)
    args = parser.parse_args(["--url", "h:1", "--concurrency", "1,4", "--ban-token-ids", "0,2"])
    assert args.concurrency == [1, 4] and args.ban_token_ids == [0, 2]
    assert args.requests_per_client is None and args.json_path is None


async def test_run_load_prompt_per_request_and_prompt_tokens() -> None:
    """A prompt function gets (client, index); the warm-up is client -1. The usage's
    prompt_tokens is kept per request and averaged in the summary."""
    prompts: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        prompts.append(body["messages"][0]["content"])
        usage = {"prompt_tokens": len(prompts[-1]), "completion_tokens": 2, "total_tokens": 0}
        lines = [_chunk("a"), _chunk("b"), json.dumps({"choices": [], "usage": usage})]
        text = "".join(f"data: {line}\n\n" for line in lines) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    result = await run_load("http://fake", "m", 2, requests_per_client=2, max_tokens=2,
                            prompt=lambda c, i: f"p{c}.{i}",
                            transport=httpx.MockTransport(handler))
    assert prompts[0] == "p-1.0" and sorted(prompts[1:]) == ["p0.0", "p0.1", "p1.0", "p1.1"]
    assert all(r.prompt_tokens == 4 for r in result.requests)
    assert result.summary()["prompt_tokens_mean"] == 4.0
