"""When the dense prompt path fails (engine/prompts.py), in-process on the real model.

A llama.cpp error in the dense context must cost nothing but time: the prompt goes
through the served weights and the request completes. If the served cache refuses
the cells moved into it, that one request ends with an error event (never a hang),
dense prefill stays off from then on, and the engine keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatd.config import Settings
from chatd.engine.types import GenerationRequest, SamplingParams, TokenEvent
from chatd.server import Runtime, build_runtime
from tests.e2e.conftest import WEIGHTS_CACHE

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    rt = build_runtime(Settings(kv_cache="f16", dense_prefill="on", max_sequences=2,
                                ctx_size=1024, kv_cells=2048, kv_layout="unified",
                                store="off", weights_cache=Path(WEIGHTS_CACHE)))
    rt.engine.start()
    try:
        yield rt
    finally:
        rt.close()


def run(rt: Runtime, prompt: list[int], max_new: int = 8) -> list[TokenEvent]:
    async def go() -> list[TokenEvent]:
        stream = rt.engine.generate(GenerationRequest(
            prompt, SamplingParams(temperature=0, max_new_tokens=max_new, ignore_eos=True)))
        return [event async for event in stream]

    return asyncio.run(go())


def prompt(rt: Runtime, seed: int) -> list[int]:
    words = " ".join(f"item{seed}-{i}" for i in range(120))
    return rt.model.tokenize(f"<|im_start|>user\n{words}<|im_end|>\n<|im_start|>assistant\n")


def test_a_dense_context_error_sends_the_prompt_through_the_served_weights(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = runtime.engine.prompts
    assert runner is not None and not runner.broken
    before = runner.tokens

    def fail(budget: int) -> bool:
        raise RuntimeError("llama_decode returned -3")

    monkeypatch.setattr(runner, "advance", fail)
    events = run(runtime, prompt(runtime, 1))
    assert [e.error for e in events] == [None] * 8 and events[-1].finish_reason == "length"
    assert runner.tokens == before and not runner.broken
    monkeypatch.undo()
    events = run(runtime, prompt(runtime, 2))
    assert events[-1].finish_reason == "length" and runner.tokens > before


def test_cells_the_served_cache_refuses_fail_one_request_and_turn_the_path_off(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = runtime.engine.prompts
    assert runner is not None

    def refuse(seq: object, count: int, data: object) -> None:
        raise RuntimeError("could not restore the KV cells of sequence 0")

    monkeypatch.setattr(runtime.engine.scheduler, "adopt", refuse)
    events = run(runtime, prompt(runtime, 3))
    assert events[-1].finish_reason == "error" and events[-1].error
    assert runner.broken
    monkeypatch.undo()
    before = runner.tokens
    events = run(runtime, prompt(runtime, 4))
    assert [e.error for e in events] == [None] * 8 and events[-1].finish_reason == "length"
    assert runner.tokens == before  # the prompt ran on the served weights
    assert runtime.engine.stats()["running_sequences"] == 0
