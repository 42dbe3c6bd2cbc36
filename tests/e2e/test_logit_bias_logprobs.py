"""logit_bias (ban / force tokens, validation) and logprobs (shape, streaming, validation).

Token ids are those of the bundled SmolLM2-135M-Instruct vocabulary:
0 = <|endoftext|>, 2 = <|im_end|> (end of turn), 28 = ",", 314 = " is".
"""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from .conftest import assert_error, assert_server_ok, parse_sse_body, sse_request

pytestmark = pytest.mark.timeout(120)

SHORT_PROMPT = "Hi"


def test_logit_bias_bans_end_of_turn(client: openai.OpenAI, model_id: str) -> None:
    base = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": SHORT_PROMPT}],
        max_tokens=20, temperature=0)
    # Precondition: without the bias the greedy answer ends on its own.
    assert base.choices[0].finish_reason == "stop", base.choices[0].message.content
    assert base.usage.completion_tokens < 20
    banned = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": SHORT_PROMPT}],
        max_tokens=20, temperature=0, logit_bias={"2": -100, "0": -100})
    assert banned.choices[0].finish_reason == "length"
    assert banned.usage.completion_tokens == 20


@pytest.mark.parametrize(("token_id", "text"), [(28, ","), (314, " is")])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logit_bias_forces_token(client: openai.OpenAI, model_id: str, token_id: int,
                                 text: str, temperature: float) -> None:
    resp = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Tell me about the moon."}],
        max_tokens=8, temperature=temperature, seed=3, logprobs=True,
        logit_bias={str(token_id): 100})
    choice = resp.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == 8
    assert {e.token for e in entries} == {text}
    assert choice.message.content == text * 8
    assert choice.finish_reason == "length"
    assert resp.usage.completion_tokens == 8


@pytest.mark.parametrize("bias", [{"abc": 5}, {"28": 200}, {"28": -101}, {"999999": 5},
                                  {"-1": 5}, {"28": "x"}])
def test_logit_bias_invalid(http: httpx.Client, model_id: str, bias: dict) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "logit_bias": bias})
    assert_error(r, 400)


@pytest.mark.parametrize("bias, named", [
    ({"abc": 5, "28": 200, "-1": 5, "29": "x", "30": 1}, ["'abc'", "28", "'-1'", "29"]),
    ({"999999": 5, "1000000": -5, "28": 1}, ["999999", "1000000"]),
], ids=["malformed", "outside_vocabulary"])
def test_logit_bias_names_every_bad_key(http: httpx.Client, model_id: str, bias: dict,
                                        named: list[str]) -> None:
    """One 400 names all of them, so one correction fixes the request."""
    r = http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "logit_bias": bias})
    err = assert_error(r, 400, param="logit_bias")
    for key in named:
        assert key in err["message"], (key, err["message"])
    assert "30" not in err["message"].replace("100", "")


def test_logit_bias_invalid_leaves_server_ok(http: httpx.Client, model_id: str) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "logit_bias": {"999999": 5}})
    assert_error(r, 400, param="logit_bias")
    assert_server_ok(http, model_id)


LP_PROMPT = "Write a short story about a robot."
LP_MAX = 10


def _check_entry(e: dict, top_n: int, *, greedy: bool) -> None:
    assert set(e) >= {"token", "logprob", "bytes", "top_logprobs"}, e
    assert isinstance(e["token"], str)
    assert isinstance(e["logprob"], float | int) and e["logprob"] <= 0
    assert math.exp(e["logprob"]) <= 1.0
    assert isinstance(e["bytes"], list) and all(
        isinstance(b, int) and 0 <= b <= 255 for b in e["bytes"])
    if e["token"].isascii():
        assert bytes(e["bytes"]) == e["token"].encode(), e
    tops = e["top_logprobs"]
    assert len(tops) == top_n, e
    for t in tops:
        assert set(t) >= {"token", "logprob", "bytes"}
        assert t["logprob"] <= 0
    lps = [t["logprob"] for t in tops]
    assert lps == sorted(lps, reverse=True), f"top_logprobs not sorted: {lps}"
    if greedy and top_n:
        assert e["token"] == tops[0]["token"], e
        assert math.isclose(e["logprob"], tops[0]["logprob"], abs_tol=1e-4), e


def test_logprobs_non_stream(http: httpx.Client, model_id: str) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": LP_PROMPT}],
        "max_tokens": LP_MAX, "temperature": 0, "logprobs": True, "top_logprobs": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert isinstance(lp, dict) and "content" in lp and "refusal" in lp, lp
    entries = lp["content"]
    assert isinstance(entries, list)
    assert choice["finish_reason"] == "length"  # so every counted token has an entry
    assert len(entries) == body["usage"]["completion_tokens"]
    for e in entries:
        _check_entry(e, 3, greedy=True)
    content = choice["message"]["content"]
    assert content.isascii(), content
    assert "".join(e["token"] for e in entries) == content


def test_logprobs_without_top_logprobs(client: openai.OpenAI, model_id: str) -> None:
    resp = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": LP_PROMPT}],
        max_tokens=8, temperature=0, logprobs=True)
    entries = resp.choices[0].logprobs.content
    assert entries
    for e in entries:
        assert e.logprob <= 0
        assert e.top_logprobs == []


def test_no_logprobs_by_default(client: openai.OpenAI, model_id: str) -> None:
    resp = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert resp.choices[0].logprobs is None


def test_logprobs_stream(http: httpx.Client, model_id: str) -> None:
    req = {"model": model_id, "messages": [{"role": "user", "content": LP_PROMPT}],
           "max_tokens": LP_MAX, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    ref = http.post("/v1/chat/completions", json=req).json()
    r, body = sse_request(http, {**req, "stream": True,
                                 "stream_options": {"include_usage": True}})
    assert r.status_code == 200, body
    chunks = parse_sse_body(body)
    entries = []
    text = ""
    for c in chunks[:-1]:
        for ch in c["choices"]:
            piece = ch["delta"].get("content")
            if piece:
                text += piece
                assert ch.get("logprobs") and ch["logprobs"].get("content"), \
                    f"content chunk without logprobs: {ch}"
                pieces = ch["logprobs"]["content"]
                assert "".join(e["token"] for e in pieces) == piece
                entries.extend(pieces)
    for e in entries:
        _check_entry(e, 2, greedy=True)
    assert len(entries) == chunks[-1]["usage"]["completion_tokens"]
    assert text == ref["choices"][0]["message"]["content"]
    assert [e["token"] for e in entries] == \
        [e["token"] for e in ref["choices"][0]["logprobs"]["content"]]


def test_top_logprobs_without_logprobs_rejected(http: httpx.Client, model_id: str) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "top_logprobs": 3})
    assert_error(r, 400)
    assert_server_ok(http, model_id)


def test_top_logprobs_out_of_range_rejected(http: httpx.Client, model_id: str) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "logprobs": True, "top_logprobs": 21})
    assert_error(r, 400, param="top_logprobs")
