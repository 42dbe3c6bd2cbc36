"""Text completions without a model: the legacy logprobs layout, best_of ranking, the
request model, and CompletionService.run over a scripted engine."""

from __future__ import annotations

import asyncio
import math
import threading
import types
from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest

from chatd.api.app import create_app
from chatd.api.protocol import CompletionRequest
from chatd.chat.completion import CompletionDelta, CompletionService, PreparedCompletion, PromptPlan
from chatd.chat.errors import ChatRequestError
from chatd.chat.generation import Limits, UsageCount
from chatd.chat.legacy import LegacyLogprobs, legacy_logprobs, rank_best
from chatd.config import Settings
from chatd.engine.types import GenerationRequest, SamplingParams, TokenEvent, TokenLogprob

# ------------------------------------------------------------------ legacy logprobs


def _entry(token: str, logprob: float, top: list[tuple[str, float]]) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": []} for t, v in top]}


def test_legacy_logprobs_layout() -> None:
    out = legacy_logprobs([_entry(" Paris", -0.2, [(" Paris", -0.2), (" the", -2.8)]),
                           _entry(".", -0.4, [])], [0, 6])
    assert out.tokens == [" Paris", "."]
    assert out.token_logprobs == [-0.2, -0.4]
    assert out.top_logprobs == [{" Paris": -0.2, " the": -2.8}, {}]
    assert out.text_offset == [0, 6]


def test_legacy_top_logprobs_keep_the_likelier_of_two_equal_spellings() -> None:
    out = legacy_logprobs([_entry("\ufffd", -1.0, [("\ufffd", -1.0), ("\ufffd", -3.0)])], [0])
    assert out.top_logprobs == [{"\ufffd": -1.0}]


def test_legacy_logprobs_need_one_offset_per_entry() -> None:
    with pytest.raises(ValueError):
        legacy_logprobs([_entry("a", -1.0, [])], [])


def test_extend_and_mean() -> None:
    a = LegacyLogprobs(["a"], [-1.0], [{}], [0])
    a.extend(LegacyLogprobs(["b"], [-3.0], [{}], [1]))
    assert a.tokens == ["a", "b"] and a.text_offset == [0, 1]
    assert a.mean() == -2.0
    assert LegacyLogprobs().mean() == -math.inf


def test_rank_best_is_per_token_with_ties_to_the_earlier() -> None:
    # sums -3 (3 tokens) vs -2 (1 token): per token, the longer one is likelier
    long, short = LegacyLogprobs(token_logprobs=[-1.0] * 3), LegacyLogprobs(token_logprobs=[-2.0])
    assert rank_best([short.mean(), long.mean()], 1) == [1]
    assert rank_best([-1.0, -0.5, -1.0, -0.5], 3) == [1, 3, 0]
    assert rank_best([-math.inf, -5.0], 2) == [1, 0]


# -------------------------------------------------------------------- request model


def _request(**body: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", **body})


@pytest.mark.parametrize("prompt", ["hi", ["a", "b"], [1, 2], [[1], [2, 3]]])
def test_the_four_prompt_forms(prompt: Any) -> None:
    assert _request(prompt=prompt).prompt == prompt


@pytest.mark.parametrize("prompt", ["", [], ["a", ""], [[1], []], ["a", 1], [1, [2]], [-1],
                                    [True], [1.5], None])
def test_bad_prompts(prompt: Any) -> None:
    with pytest.raises(pydantic.ValidationError):
        _request(prompt=prompt)


@pytest.mark.parametrize("body", [{"logprobs": 6}, {"best_of": 21}, {"stop": list("abcde")},
                                  {"logit_bias": {"x": 1}}, {"max_tokens": -1},
                                  {"messages": []}])
def test_bad_fields(body: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        _request(prompt="hi", **body)


def test_shared_helpers() -> None:
    req = _request(prompt="hi", stop=["", "x"], stream=True,
                   stream_options={"include_usage": True})
    assert req.stop_list() == ["x"] and req.include_usage()


# ----------------------------------------------------------------------- budgets


def test_limits_name_the_prompt() -> None:
    limits = Limits(ctx_size=100, kv_cells=400, max_n=4, n_vocab=50)
    assert limits.max_new_tokens(10, 16, 2, what="prompt") == 16
    assert limits.max_new_tokens(10, None, 1) == 90
    with pytest.raises(ChatRequestError) as exc:
        limits.max_new_tokens(90, 16, 1, what="prompt")
    assert exc.value.param == "prompt" and exc.value.code == "context_length_exceeded"
    assert "your prompt resulted in 90 tokens" in exc.value.message
    with pytest.raises(ChatRequestError) as exc:
        limits.check_n(5, "best_of")
    assert exc.value.param == "best_of"
    with pytest.raises(ChatRequestError, match="outside this model's vocabulary"):
        limits.logit_bias({"50": 1.0, "51": 2.0})


# ------------------------------------------------------------- run, scripted engine


def _event(index: int, text: str, logprob: float | None, finish: str | None = None
           ) -> TokenEvent:
    lp = None if logprob is None else TokenLogprob(7, text.encode(), logprob)
    return TokenEvent(index=index, token_id=7, text=text, logprob=lp,
                      top_logprobs=[] if lp else None, finish_reason=finish)  # type: ignore[arg-type]


class FakeStream:
    def __init__(self, events: list[TokenEvent]) -> None:
        self.events = list(events)
        self.cancelled: list[int | None] = []
        self.closed = False

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self

    async def __anext__(self) -> TokenEvent:
        await asyncio.sleep(0)
        if not self.events:
            raise StopAsyncIteration
        return self.events.pop(0)

    def cancel(self, index: int | None = None) -> None:
        self.cancelled.append(index)

    async def aclose(self) -> None:
        self.closed = True


class FakeEngine:
    def __init__(self, scripts: list[list[TokenEvent]]) -> None:
        self.streams = [FakeStream(s) for s in scripts]
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest) -> FakeStream:
        self.requests.append(request)
        return self.streams[len(self.requests) - 1]


def _prepared(prompts: int, *, n: int, best_of: int, echo: str = "", stops: list[str] | None
              = None, logprobs: int | None = None) -> PreparedCompletion:
    gen = GenerationRequest(prompt_tokens=[1, 2], params=SamplingParams(), n=best_of)
    return PreparedCompletion([PromptPlan(gen, echo) for _ in range(prompts)], stops or [],
                              n, best_of, logprobs, 2 * prompts, 8)


def _run(engine: FakeEngine, prepared: PreparedCompletion) -> tuple[list[CompletionDelta],
                                                                   UsageCount]:
    service = CompletionService(engine, Limits(100, 400, 8, 50))  # type: ignore[arg-type]
    usage = UsageCount()

    async def collect() -> list[CompletionDelta]:
        return [d async for d in service.run(prepared, usage, streaming=True)]

    return asyncio.run(collect()), usage


def test_best_of_returns_the_best_per_token_whole() -> None:
    engine = FakeEngine([[
        _event(0, "a", -0.5), _event(1, "x", -0.8), _event(2, "p", -3.0),
        _event(0, "b", -0.5, "length"), _event(1, "", None, "stop"),
        _event(2, "q", -3.0, "length"),
    ]])
    deltas, usage = _run(engine, _prepared(1, n=2, best_of=3))
    # per token: candidate 0 -0.5, candidate 1 -0.8, candidate 2 -3.0 (by sum, the
    # one-token candidate 1 at -0.8 would beat candidate 0 at -1.0)
    assert [(d.index, d.text, d.finish_reason) for d in deltas] == [
        (0, "ab", "length"), (1, "x", "stop")]
    assert all(d.logprobs is None for d in deltas)  # not asked for: used for ranking only
    assert usage.completion_tokens == 6  # every candidate's tokens, its end token too


def test_indices_echo_and_offsets_over_several_prompts() -> None:
    engine = FakeEngine([
        [_event(0, "a", -1.0), _event(0, "bc", -2.0, "length")],
        [_event(0, "d", -0.5, "length")],
    ])
    deltas, usage = _run(engine, _prepared(2, n=1, best_of=1, echo="P:", logprobs=0))
    text = {i: "".join(d.text for d in deltas if d.index == i) for i in (0, 1)}
    assert text == {0: "P:abc", 1: "P:d"}
    offsets = [o for d in deltas if d.index == 0 and d.logprobs for o in d.logprobs.text_offset]
    assert offsets == [2, 3]  # each token's first character in "P:abc"
    assert usage.prompt_tokens == 4 and usage.completion_tokens == 3
    assert all(s.closed for s in engine.streams)


def test_stop_string_cuts_and_cancels_that_choice() -> None:
    engine = FakeEngine([[_event(0, "one ", -1.0), _event(0, "END", -1.0),
                          _event(0, "more", -1.0, "length")]])
    deltas, _ = _run(engine, _prepared(1, n=1, best_of=1, stops=["END"], logprobs=0))
    assert "".join(d.text for d in deltas) == "one "
    assert deltas[-1].finish_reason == "stop"
    tokens = [t for d in deltas if d.logprobs for t in d.logprobs.tokens]
    assert tokens == ["one "]  # the stop string's token is dropped with it
    assert engine.streams[0].cancelled == [0]


def test_max_tokens_zero_asks_the_engine_nothing() -> None:
    engine = FakeEngine([])
    prepared = _prepared(2, n=2, best_of=2, echo="hi")
    prepared.max_new_tokens = 0
    deltas, usage = _run(engine, prepared)
    assert [(d.index, d.text, d.finish_reason) for d in deltas] == [
        (i, "hi", "length") for i in range(4)]
    assert engine.requests == [] and usage.completion_tokens == 0


# ---------------------------------------------------------------------- OpenAPI


def test_openapi_documents_the_route() -> None:
    engine = types.SimpleNamespace(stats=dict, alive=threading.main_thread().is_alive)
    runtime = types.SimpleNamespace(settings=Settings(), engine=engine, chat=None,
                                    model_name="m", fingerprint="fp_x")
    doc = create_app(runtime).openapi()  # type: ignore[arg-type]
    op = doc["paths"]["/v1/completions"]["post"]
    assert op["operationId"] == "createCompletion"
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CompletionRequest"}
    ok = op["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/Completion"}
    assert "text/event-stream" in ok and "422" not in op["responses"]
    assert {"400", "401", "404", "429", "503"} <= set(op["responses"])
    assert {"CompletionChoice", "CompletionLogprobs"} <= set(doc["components"]["schemas"])
