"""POST /v1/completions (OpenAI's legacy Completions API) on the real model, through
the official client's ``client.completions.create`` and raw HTTP.

Token ids are those of the bundled SmolLM2-135M-Instruct vocabulary; the model adds
no BOS, so "The capital of France is" is exactly FRANCE_IDS. End-of-generation ids
are 0, 2 and 4; NO_EOS bans them so a completion runs to max_tokens.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import openai
import pytest

from .conftest import AUTH_KEY, assert_error, parse_sse_body

pytestmark = pytest.mark.timeout(120)

FRANCE = "The capital of France is"
FRANCE_IDS = [504, 3575, 282, 4649, 314]
COUNT = "1, 2, 3, 4, 5,"
NO_EOS = {"0": -100, "2": -100, "4": -100}


def _stream_texts(chunks: list[Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            out[choice.index] = out.get(choice.index, "") + choice.text
    return out


def test_plain_completion_and_usage(client: openai.OpenAI, model_id: str) -> None:
    resp = client.completions.create(model=model_id, prompt=FRANCE, max_tokens=8,
                                     temperature=0)
    assert resp.object == "text_completion"
    assert resp.id.startswith("cmpl-")
    assert resp.model == model_id and resp.system_fingerprint
    [choice] = resp.choices
    assert choice.index == 0 and choice.logprobs is None
    assert "Paris" in choice.text
    assert choice.finish_reason in ("stop", "length")
    usage = resp.usage
    assert usage.prompt_tokens == len(FRANCE_IDS)
    assert 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_default_max_tokens_is_16(client: openai.OpenAI, model_id: str) -> None:
    resp = client.completions.create(model=model_id, prompt="Once upon a time",
                                     logit_bias=NO_EOS, seed=1)
    assert resp.usage.completion_tokens == 16
    assert resp.choices[0].finish_reason == "length"


def test_length_at_max_tokens_with_logprobs(client: openai.OpenAI, model_id: str) -> None:
    resp = client.completions.create(model=model_id, prompt=FRANCE, max_tokens=7,
                                     temperature=0, logprobs=2, logit_bias=NO_EOS)
    [choice] = resp.choices
    assert choice.finish_reason == "length"
    assert resp.usage.completion_tokens == 7
    lp = choice.logprobs
    assert lp is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) \
        == len(lp.text_offset) == resp.usage.completion_tokens
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    assert all(a < b for a, b in zip(lp.text_offset, lp.text_offset[1:], strict=False))
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs,
                                   strict=True):
        assert logprob <= 0 and 1 <= len(top) <= 2
        assert all(v <= 0 for v in top.values())
        # greedy: the chosen token is the likeliest one
        assert top[token] == pytest.approx(logprob) == pytest.approx(max(top.values()))


def test_stop_string_never_returned(client: openai.OpenAI, model_id: str) -> None:
    base = client.completions.create(model=model_id, prompt=COUNT, max_tokens=12,
                                     temperature=0)
    assert " 8" in base.choices[0].text  # precondition: the count goes on
    resp = client.completions.create(model=model_id, prompt=COUNT, max_tokens=12,
                                     temperature=0, stop=[" 8", "zz"])
    text = resp.choices[0].text
    assert resp.choices[0].finish_reason == "stop"
    assert "8" not in text and text == base.choices[0].text.split(" 8")[0]
    stream = client.completions.create(model=model_id, prompt=COUNT, max_tokens=12,
                                       temperature=0, stop=[" 8", "zz"], stream=True)
    chunks = list(stream)
    assert all("8" not in c.choices[0].text for c in chunks if c.choices)
    assert _stream_texts(chunks) == {0: text}
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_and_list_of_prompts_indices(client: openai.OpenAI, model_id: str) -> None:
    prompts = [FRANCE, COUNT]
    resp = client.completions.create(model=model_id, prompt=prompts, n=2, max_tokens=6,
                                     temperature=0)
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    singles = [client.completions.create(model=model_id, prompt=p, max_tokens=6,
                                         temperature=0) for p in prompts]
    # choice index = prompt index * n + i, as OpenAI numbers them
    for i, choice in enumerate(resp.choices):
        assert choice.text == singles[i // 2].choices[0].text
    assert resp.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert resp.usage.completion_tokens == 2 * sum(s.usage.completion_tokens
                                                   for s in singles)


def test_n_choices_differ_with_sampling(client: openai.OpenAI, model_id: str) -> None:
    resp = client.completions.create(model=model_id, prompt="Once upon a time", n=3,
                                     max_tokens=12, seed=11, logit_bias=NO_EOS)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert len({c.text for c in resp.choices}) > 1


def test_token_id_prompts(client: openai.OpenAI, model_id: str) -> None:
    text = client.completions.create(model=model_id, prompt=FRANCE, max_tokens=6,
                                     temperature=0)
    ids = client.completions.create(model=model_id, prompt=FRANCE_IDS, max_tokens=6,
                                    temperature=0)
    assert ids.choices[0].text == text.choices[0].text
    assert ids.usage.prompt_tokens == len(FRANCE_IDS)
    many = client.completions.create(model=model_id, prompt=[FRANCE_IDS, FRANCE_IDS[:3]],
                                     max_tokens=6, temperature=0, echo=True)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[0].text == FRANCE + text.choices[0].text
    assert many.choices[1].text.startswith("The capital of")


def test_echo_prepends_the_prompt(client: openai.OpenAI, model_id: str) -> None:
    plain = client.completions.create(model=model_id, prompt=FRANCE, max_tokens=5,
                                      temperature=0)
    echoed = client.completions.create(model=model_id, prompt=FRANCE, max_tokens=5,
                                       temperature=0, echo=True)
    assert echoed.choices[0].text == FRANCE + plain.choices[0].text
    assert echoed.usage.prompt_tokens == plain.usage.prompt_tokens
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens
    stream = list(client.completions.create(model=model_id, prompt=FRANCE, max_tokens=5,
                                            temperature=0, echo=True, stream=True))
    assert stream[0].choices[0].text.startswith(FRANCE)
    assert _stream_texts(stream) == {0: echoed.choices[0].text}
    zero = client.completions.create(model=model_id, prompt=FRANCE, max_tokens=0,
                                     echo=True)
    assert zero.choices[0].text == FRANCE and zero.choices[0].finish_reason == "length"
    assert zero.usage.completion_tokens == 0


def test_best_of_returns_the_likeliest_candidate(client: openai.OpenAI,
                                                 model_id: str) -> None:
    """best_of=3 draws the same three candidates as n=3 with the same seed (choice i
    samples with seed + i), and returns the one with the highest log probability per
    token; all run to max_tokens here, so that is also the highest sum."""
    args: dict[str, Any] = dict(model=model_id, prompt="My favourite animal is",
                                max_tokens=6, seed=21, temperature=1.0, logprobs=0,
                                logit_bias=NO_EOS)
    all_three = client.completions.create(n=3, **args)
    sums = [math.fsum(c.logprobs.token_logprobs) for c in all_three.choices]
    assert len({c.text for c in all_three.choices}) > 1, "candidates should differ"
    best = client.completions.create(best_of=3, n=1, **args)
    [choice] = best.choices
    assert choice.index == 0
    winner = all_three.choices[max(range(3), key=lambda i: sums[i])]
    assert choice.text == winner.text
    assert choice.logprobs.token_logprobs == pytest.approx(winner.logprobs.token_logprobs)
    assert best.usage.completion_tokens == 3 * 6  # every candidate is generated
    two = client.completions.create(best_of=3, n=2, **args)
    ranked = sorted(range(3), key=lambda i: -sums[i])[:2]
    assert [c.text for c in two.choices] == [all_three.choices[i].text for i in ranked]
    assert [c.index for c in two.choices] == [0, 1]
    no_logprobs = client.completions.create(best_of=3, **{**args, "logprobs": None})
    assert no_logprobs.choices[0].text == winner.text
    assert no_logprobs.choices[0].logprobs is None


def test_streaming_matches_non_streaming(client: openai.OpenAI, model_id: str) -> None:
    args: dict[str, Any] = dict(model=model_id, prompt="Once upon a time", n=2,
                                max_tokens=10, seed=7)
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(stream=True,
                                            stream_options={"include_usage": True}, **args))
    assert all(c.object == "text_completion" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert _stream_texts(chunks) == {c.index: c.text for c in whole.choices}
    finishes = {ch.index: ch.finish_reason for c in chunks for ch in c.choices
                if ch.finish_reason}
    assert finishes == {c.index: c.finish_reason for c in whole.choices}


def test_streamed_logprobs_line_up_with_the_text(client: openai.OpenAI,
                                                 model_id: str) -> None:
    chunks = list(client.completions.create(model=model_id, prompt=COUNT, max_tokens=8,
                                            temperature=0, logprobs=1, stream=True,
                                            logit_bias=NO_EOS))
    tokens: list[str] = []
    offsets: list[int] = []
    for chunk in chunks:
        lp = chunk.choices[0].logprobs
        if lp is not None:
            tokens += lp.tokens
            offsets += lp.text_offset
    text = _stream_texts(chunks)[0]
    assert len(tokens) == 8 and "".join(tokens) == text
    assert offsets == [len("".join(tokens[:i])) for i in range(8)]


def test_raw_sse_framing(http: httpx.Client, model_id: str) -> None:
    with http.stream("POST", "/v1/completions", json={
            "model": model_id, "prompt": FRANCE, "max_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = parse_sse_body(r.read().decode())
    for chunk in chunks:
        assert set(chunk) == {"id", "object", "created", "model", "system_fingerprint",
                              "choices"}  # no usage key without include_usage
        [choice] = chunk["choices"]
        assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_context_length_exceeded(http: httpx.Client, model_id: str) -> None:
    r = http.post("/v1/completions", json={"model": model_id, "prompt": FRANCE,
                                           "max_tokens": 9000})
    assert_error(r, 400, code="context_length_exceeded", param="prompt")


@pytest.mark.parametrize(("extra", "status", "param", "code"), [
    ({"suffix": " and that is all."}, 400, "suffix", "unsupported_parameter"),
    ({"n": 3, "best_of": 2}, 400, "best_of", None),
    ({"best_of": 2, "stream": True}, 400, "best_of", None),
    ({"best_of": 100}, 400, "best_of", None),
    ({"logprobs": 6}, 400, "logprobs", None),
    ({"logprobs": -1}, 400, "logprobs", None),
    ({"echo": True, "logprobs": 1}, 400, "logprobs", "unsupported_parameter"),
    ({"prompt": ""}, 400, "prompt", None),
    ({"prompt": []}, 400, "prompt", None),
    ({"prompt": ["ok", ""]}, 400, "prompt", None),
    ({"prompt": [[]]}, 400, "prompt", None),
    ({"prompt": ["text", 5]}, 400, "prompt", None),
    ({"prompt": [10**9]}, 400, "prompt", None),
    ({"model": "no-such-model"}, 404, "model", "model_not_found"),
    ({"frobnicate": 1}, 400, "frobnicate", "unknown_parameter"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, 400, "messages",
     "unknown_parameter"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
    ({"logit_bias": {"999999": 1}}, 400, "logit_bias", None),
])
def test_errors(http: httpx.Client, model_id: str, extra: dict[str, Any], status: int,
                param: str, code: str | None) -> None:
    body = {"model": model_id, "prompt": FRANCE, "max_tokens": 4, **extra}
    assert_error(http.post("/v1/completions", json=body), status, param=param, code=code)


def test_errors_through_the_official_client(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=model_id, prompt=FRANCE, suffix="!")
    assert exc.value.body["param"] == "suffix"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt=FRANCE)


def test_metered_like_chat(http: httpx.Client, client: openai.OpenAI,
                           model_id: str) -> None:
    def counters() -> dict[str, float]:
        out = {}
        for line in http.get("/metrics").text.splitlines():
            key, _, value = line.partition(" ")
            if key in ("chatd_prompt_tokens_total", "chatd_completion_tokens_total",
                       "chatd_time_to_first_token_seconds_count",
                       "chatd_inter_token_latency_seconds_count"):
                out[key] = float(value)
        return out

    before = counters()
    resp = client.completions.create(model=model_id, prompt="Once upon a time",
                                     max_tokens=9, logit_bias=NO_EOS, seed=2)
    after = counters()
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    assert delta == {"chatd_prompt_tokens_total": resp.usage.prompt_tokens,
                     "chatd_completion_tokens_total": 9,
                     "chatd_time_to_first_token_seconds_count": 1,
                     "chatd_inter_token_latency_seconds_count": 8}


def test_requires_the_api_key_like_chat(auth_server_url: str) -> None:
    body = {"model": "ignored-before-auth", "prompt": FRANCE, "max_tokens": 2}
    r = httpx.post(auth_server_url + "/v1/completions", json=body, timeout=60)
    assert_error(r, 401, code="invalid_api_key")
    model = httpx.get(auth_server_url + "/v1/models", timeout=60, headers={
        "Authorization": f"Bearer {AUTH_KEY}"}).json()["data"][0]["id"]
    ok = httpx.post(auth_server_url + "/v1/completions", json={**body, "model": model},
                    headers={"Authorization": f"Bearer {AUTH_KEY}"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["object"] == "text_completion"
