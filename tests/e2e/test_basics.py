"""Non-streaming basics: response shape, usage, message content forms and roles."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.timeout(120)

PROMPT = "What is the capital of France?"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def test_non_stream_response_shape_raw(http: httpx.Client, model_id: str) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 20, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["object"] == "chat.completion"
    assert isinstance(body["id"], str) and body["id"].startswith("chatcmpl-")
    assert _is_int(body["created"])
    assert abs(body["created"] - time.time()) < 300
    assert body["model"] == model_id
    assert isinstance(body["system_fingerprint"], str) and body["system_fingerprint"]
    assert len(body["choices"]) == 1
    choice = body["choices"][0]
    # The spec requires all four keys on a choice, and role/content/refusal on message.
    assert {"index", "message", "finish_reason", "logprobs"} <= set(choice)
    assert choice["index"] == 0
    assert choice["logprobs"] is None
    msg = choice["message"]
    assert {"role", "content", "refusal"} <= set(msg), msg
    assert msg["role"] == "assistant"
    assert isinstance(msg["content"], str) and msg["content"]
    assert choice["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert _is_int(usage[key]), usage
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["completion_tokens"] <= 20
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert _is_int(usage["prompt_tokens_details"]["cached_tokens"]), usage


def test_non_stream_with_sdk(client: openai.OpenAI, model_id: str) -> None:
    resp = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": PROMPT}],
        max_tokens=20, temperature=0)
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert isinstance(resp.created, int)
    assert resp.model == model_id
    assert isinstance(resp.system_fingerprint, str) and resp.system_fingerprint
    msg = resp.choices[0].message
    assert msg.role == "assistant"
    assert isinstance(msg.content, str) and msg.content
    assert resp.choices[0].finish_reason in {"stop", "length"}
    u = resp.usage
    assert u is not None
    assert u.prompt_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details is not None
    assert isinstance(u.prompt_tokens_details.cached_tokens, int)


def test_ids_are_unique(client: openai.OpenAI, model_id: str) -> None:
    ids = {client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=2).id
        for _ in range(3)}
    assert len(ids) == 3, ids


def test_deterministic_at_temperature_zero(client: openai.OpenAI, model_id: str) -> None:
    texts = [client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": PROMPT}],
        max_tokens=24, temperature=0).choices[0].message.content for _ in range(2)]
    assert texts[0] == texts[1]


def test_content_parts_equal_joined_string(client: openai.OpenAI, model_id: str) -> None:
    parts = ["Name a color.", "Answer in one word."]
    common = {"model": model_id, "max_tokens": 24, "temperature": 0, "seed": 11}
    joined = client.chat.completions.create(
        messages=[{"role": "user", "content": "\n".join(parts)}], **common)
    as_parts = client.chat.completions.create(
        messages=[{"role": "user",
                   "content": [{"type": "text", "text": p} for p in parts]}], **common)
    assert as_parts.choices[0].message.content == joined.choices[0].message.content
    assert as_parts.usage.prompt_tokens == joined.usage.prompt_tokens


def test_system_content_parts_accepted(client: openai.OpenAI, model_id: str) -> None:
    common = {"model": model_id, "max_tokens": 16, "temperature": 0}
    sys_text = ["You are a helpful assistant.", "Be brief."]
    joined = client.chat.completions.create(messages=[
        {"role": "system", "content": "\n".join(sys_text)},
        {"role": "user", "content": "Hi"}], **common)
    as_parts = client.chat.completions.create(messages=[
        {"role": "system", "content": [{"type": "text", "text": t} for t in sys_text]},
        {"role": "user", "content": "Hi"}], **common)
    assert as_parts.choices[0].message.content == joined.choices[0].message.content


def test_developer_role_accepted(client: openai.OpenAI, model_id: str) -> None:
    resp = client.chat.completions.create(
        model=model_id, max_tokens=12, temperature=0,
        messages=[{"role": "developer", "content": "You answer in one short sentence."},
                  {"role": "user", "content": "What is water?"}])
    assert resp.choices[0].message.content
    assert resp.choices[0].finish_reason in {"stop", "length"}


def test_name_accepted(client: openai.OpenAI, model_id: str) -> None:
    resp = client.chat.completions.create(
        model=model_id, max_tokens=12, temperature=0,
        messages=[{"role": "system", "content": "Be brief.", "name": "rules"},
                  {"role": "user", "content": "Hello!", "name": "alice"}])
    assert resp.choices[0].message.content


def test_multi_turn_conversation(client: openai.OpenAI, model_id: str) -> None:
    resp = client.chat.completions.create(
        model=model_id, max_tokens=12, temperature=0,
        messages=[{"role": "user", "content": "My name is Bob."},
                  {"role": "assistant", "content": "Nice to meet you, Bob."},
                  {"role": "user", "content": "What is my name?"}])
    assert resp.choices[0].message.content
    single = client.chat.completions.create(
        model=model_id, max_tokens=2, temperature=0,
        messages=[{"role": "user", "content": "What is my name?"}])
    assert resp.usage.prompt_tokens > single.usage.prompt_tokens


def test_health(http: httpx.Client) -> None:
    r = http.get("/health")
    assert r.status_code == 200


def _histogram(metrics: str, name: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram in /metrics text."""
    values = {}
    for line in metrics.splitlines():
        key, _, value = line.partition(" ")
        if key in (f"{name}_sum", f"{name}_count"):
            values[key] = float(value)
    return values[f"{name}_sum"], values[f"{name}_count"]


def test_non_streaming_latency_metrics_are_the_engines(http: httpx.Client,
                                                      client: openai.OpenAI,
                                                      model_id: str) -> None:
    """Without streaming or stop strings the engine hands the output over in one piece
    at the end; time to first token and inter-token gaps are still when each token was
    produced, not when the batch arrived."""
    names = ("chatd_time_to_first_token_seconds", "chatd_inter_token_latency_seconds",
             "chatd_e2e_request_latency_seconds")
    before = [_histogram(http.get("/metrics").text, n) for n in names]
    r = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=96, logit_bias={"2": -100, "0": -100})  # never ends on its own
    assert r.usage.completion_tokens == 96 and r.choices[0].finish_reason == "length"
    after = [_histogram(http.get("/metrics").text, n) for n in names]
    (ttft, n_ttft), (itl, n_itl), (e2e, n_e2e) = [
        (a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)]
    assert (n_ttft, n_itl, n_e2e) == (1, 95, 1)
    # Relations that hold however loaded the machine is (load only stretches them):
    # the first token and the 95 gaps after it end at the last token, inside the
    # request's own time; and each gap is a decode step, not the microseconds between
    # tokens handed over together (metering at the hand-over gives ~1e-6 s per gap and
    # a TTFT equal to the whole request).
    assert ttft + itl <= e2e + 1e-3
    assert itl / 95 > 5e-4
