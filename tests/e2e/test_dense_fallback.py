"""When the dense paths fail (engine/prompts.py, engine/weights.py), in-process on
the real model.

A llama.cpp error in the dense context must cost nothing but time: the prompt goes
through the served weights and the request completes. If the served cache refuses
the cells moved into it, that one request ends with an error event (never a hang),
dense prefill stays off from then on, and the engine keeps serving. If moving the KV
cache between the file's weights and the copy fails, the requests running then end
with an error event, batches stay on the file's weights, and the engine keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatd import server as server_module
from chatd.config import Settings
from chatd.engine.llama import LlamaContext
from chatd.engine.types import GenerationRequest, SamplingParams, TokenEvent
from chatd.server import ConfigError, Runtime, build_runtime
from tests.e2e.conftest import WEIGHTS_CACHE

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    rt = build_runtime(Settings(kv_cache="f16", dense_prefill="on", dense_decode="on",
                                max_sequences=2,
                                ctx_size=1024, kv_cells=2048, kv_layout="unified",
                                store="off", weights_cache=Path(WEIGHTS_CACHE)))
    rt.engine.start()
    try:
        yield rt
    finally:
        rt.close()


def run(rt: Runtime, prompt: list[int], max_new: int = 8) -> list[TokenEvent]:
    return run_together(rt, [prompt], max_new)[0]


def run_together(rt: Runtime, prompts: list[list[int]],
                 max_new: int = 8) -> list[list[TokenEvent]]:
    async def go() -> list[list[TokenEvent]]:
        streams = [rt.engine.generate(GenerationRequest(
            p, SamplingParams(temperature=0, max_new_tokens=max_new, ignore_eos=True)))
            for p in prompts]

        async def drain(stream: object) -> list[TokenEvent]:
            return [event async for event in stream]  # type: ignore[attr-defined]

        return await asyncio.gather(*(drain(s) for s in streams))

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


def test_a_failed_move_between_weights_ends_the_running_requests_and_stays_put(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    switch = runtime.engine.weights
    assert switch is not None and not switch.broken and not switch.dense

    def fail_after_swapping(swap: Callable[[], None]) -> None:
        swap()  # the worst moment: the served model already holds the copy's context
        raise RuntimeError("could not restore the KV cells of sequence 1")

    monkeypatch.setattr(runtime.engine.scheduler, "migrate", fail_after_swapping)
    both = run_together(runtime, [prompt(runtime, 5), prompt(runtime, 6)])
    for events in both:
        assert events[-1].finish_reason == "error" and events[-1].error
    assert switch.broken and not switch.dense
    monkeypatch.undo()
    steps = switch.steps
    both = run_together(runtime, [prompt(runtime, 7), prompt(runtime, 8)])
    for events in both:
        assert [e.error for e in events] == [None] * 8 and events[-1].finish_reason == "length"
    assert switch.steps == steps  # on the file's weights
    assert runtime.engine.stats()["running_sequences"] == 0


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_a_batch_context_llama_cpp_cannot_create_costs_only_its_own_path(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("llama.cpp could not create a context (out of memory?)")

    monkeypatch.setattr(server_module, "LlamaContext", no_memory)
    # `auto` as on a stock llama.cpp, which holds Q4_1 weights plain (chatd's patch
    # interleaves them, and then `auto` takes no copy at all).
    monkeypatch.setattr(LlamaContext, "interleaved", property(lambda self: False))
    settings = Settings(kv_cache="f16", dense_prefill="auto", dense_decode=mode,
                        max_sequences=2, ctx_size=1024, kv_cells=2048, kv_layout="unified",
                        store="off", weights_cache=Path(WEIGHTS_CACHE))
    if mode == "on":
        with pytest.raises(ConfigError, match=r"--dense-decode on: llama\.cpp could not create"):
            build_runtime(settings)
        return
    rt = build_runtime(settings)
    try:
        assert rt.engine.weights is None and rt.engine.prompts is not None
        assert rt.weights.endswith("(prompts through a BF16 copy)") or \
            rt.weights.endswith("(prompts through a F16 copy)")
    finally:
        rt.close()
