"""Batches through a dense copy of the weights (`--dense-decode`, engine/weights.py),
on a real server in the default mode, in both KV layouts.

Steps of two or more sequences decode on a BF16 (or F16) copy of the bundled Q4_1
weights; a lone sequence goes back to the file's own, and the KV cache moves between
the two llama.cpp contexts as saved bytes. What a client must see: every request
that was running when its cache moved completes, with its tokens counted; a lone
request never touches the copy; a cached prefix comes back byte for byte after a
trip to the copy and back (a repeat's first token is drawn from bitwise the same
distribution with a stream per sequence; in one shared pool the f16 cache's own
rounding caveat applies, see test_dense_prefill.py); and `--deterministic` refuses
the copy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from chatd.engine.weights import LONE_SECONDS
from tests.e2e.conftest import ServerProcess, openai_client, running_server, start_up_error
from tests.e2e.test_dense_prefill import NO_EOG, first_token, fresh_text, health, split

pytestmark = pytest.mark.timeout(300)

# Eight streams in the split layout, so that a batch of three takes others than the
# most recently used entry (test_a_cached_prefix_comes_back_intact_from_the_copy).
ARGS = ["--kv-cache", "f16", "--max-sequences", "4", "--ctx-size", "2048",
        "--kv-cells", str(8 * 2048), "--dense-prefill", "on", "--dense-decode", "on"]


@pytest.fixture(scope="module", params=["unified", "split"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with running_server([*ARGS, "--kv-layout", request.param]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai_client(server) as c:
        yield c


def back_on_the_file_weights(server: ServerProcess) -> dict:
    """Wait until the idle engine has moved its cache back (LONE_SECONDS after the
    last batch)."""
    deadline = time.monotonic() + 10 * LONE_SECONDS + 5
    while (h := health(server))["dense_decode_now"] and time.monotonic() < deadline:
        time.sleep(LONE_SECONDS / 2)
    assert not h["dense_decode_now"]
    return h


async def stream(server: ServerProcess, model_id: str, content: str, max_tokens: int,
                 **kw: object) -> tuple[str, int, str | None, list]:
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x",
                                  max_retries=0) as c:
        s = await c.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": content}],
            max_tokens=max_tokens, stream=True, stream_options={"include_usage": True},
            logit_bias=NO_EOG, **kw)
        text, tokens, finish, logprobs = "", 0, None, []
        async for chunk in s:
            if chunk.choices:
                choice = chunk.choices[0]
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
                if choice.logprobs and choice.logprobs.content:
                    logprobs += choice.logprobs.content
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return text, tokens, finish, logprobs


def test_a_batch_decodes_on_the_copy_and_a_lone_request_on_the_file(
        server: ServerProcess, client: openai.OpenAI, model_id: str) -> None:
    before = back_on_the_file_weights(server)
    assert "batches through a" in before["weights"]
    r = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Name three rivers."}],
        max_tokens=24, temperature=0, logit_bias=NO_EOG)
    assert r.usage.completion_tokens == 24
    alone = health(server)
    assert alone["dense_decode_steps"] == before["dense_decode_steps"]
    assert alone["weights_switches"] == before["weights_switches"]

    async def batch() -> list[tuple[str, int, str | None, list]]:
        return await asyncio.gather(*(
            stream(server, model_id, f"Count from {i} to 100.", 40, temperature=0)
            for i in range(4)))

    results = asyncio.run(batch())
    assert all(tokens == 40 and finish == "length" for _, tokens, finish, _ in results)
    during = health(server)
    assert during["dense_decode_steps"] - alone["dense_decode_steps"] >= 30
    after = back_on_the_file_weights(server)
    # Over to the copy and back, at least once each.
    assert after["weights_switches"] - alone["weights_switches"] >= 2
    assert (after["weights_switches"] - alone["weights_switches"]) % 2 == 0
    metrics = httpx.get(server.url + "/metrics").text
    assert f"chatd_dense_decode_steps_total {float(after['dense_decode_steps'])}" in metrics


def test_a_cached_prefix_comes_back_intact_from_the_copy(server: ServerProcess,
                                                         client: openai.OpenAI,
                                                         model_id: str) -> None:
    """A chat's entry moves to the copy's context while a batch runs beside it, and
    back; the repeat finds it there and (one stream per sequence) draws its first token
    from bitwise the same distribution: any byte of the entry changed on the way would
    show.
    The batch is one request with n=3: its sequences take the least recently used
    slots, never the chat's."""
    back_on_the_file_weights(server)
    messages = [{"role": "user", "content": fresh_text(300, 77)}]
    first = client.chat.completions.create(model=model_id, messages=messages, max_tokens=24,
                                           temperature=0, logprobs=True, top_logprobs=5)
    switches = health(server)["weights_switches"]

    batch = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": fresh_text(60, 80)}],
        max_tokens=16, temperature=1.0, seed=3, n=3, logit_bias=NO_EOG)
    assert [c.finish_reason for c in batch.choices] == ["length"] * 3
    assert back_on_the_file_weights(server)["weights_switches"] - switches >= 2
    again = client.chat.completions.create(model=model_id, messages=messages, max_tokens=24,
                                           temperature=0, logprobs=True, top_logprobs=5)
    assert again.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens - 1
    if split(server):
        assert first_token(again) == first_token(first)


def test_a_request_running_when_a_batch_forms_finishes_intact(server: ServerProcess,
                                                              model_id: str) -> None:
    """Its cache moves to the copy mid-answer and back after the others finish; every
    token arrives, and each is the top choice of the distribution it was drawn from."""
    back_on_the_file_weights(server)

    async def run() -> tuple[tuple[str, int, str | None, list], list]:
        long = asyncio.create_task(stream(server, model_id, "Tell me about the sea.", 160,
                                          temperature=0, logprobs=True, top_logprobs=3))
        await asyncio.sleep(0.4)  # it is decoding alone, on the file's weights
        others = await asyncio.gather(*(
            stream(server, model_id, f"List {i + 3} colours.", 24, temperature=1.0, seed=i)
            for i in range(3)))
        return await long, others

    before = health(server)
    (text, tokens, finish, logprobs), others = asyncio.run(run())
    after = health(server)
    assert (tokens, finish) == (160, "length") and len(logprobs) == 160 and text
    assert all(o[1:3] == (24, "length") for o in others)
    assert after["dense_decode_steps"] > before["dense_decode_steps"]
    for lp in logprobs:  # greedy: the token taken is the most likely one
        assert lp.logprob == pytest.approx(max(t.logprob for t in lp.top_logprobs), abs=1e-4)
    assert after["running_sequences"] == 0


def test_a_seeded_request_alone_draws_as_before_after_batches(server: ServerProcess,
                                                              client: openai.OpenAI,
                                                              model_id: str) -> None:
    """Alone it never touches the copy: after batches ran meanwhile, its first token is
    drawn from bitwise the same distribution, so the seed picks the same one (split
    layout; see the module docstring for one pool and for later tokens)."""
    back_on_the_file_weights(server)
    messages = [{"role": "user", "content": "Write a line about autumn."}]
    first = client.chat.completions.create(model=model_id, messages=messages, max_tokens=24,
                                           temperature=1.0, seed=11, logprobs=True,
                                           top_logprobs=5)

    async def batch() -> None:
        await asyncio.gather(*(stream(server, model_id, f"Spell {i}.", 12, temperature=0)
                               for i in range(4)))

    asyncio.run(batch())
    steps = back_on_the_file_weights(server)["dense_decode_steps"]
    again = client.chat.completions.create(model=model_id, messages=messages, max_tokens=24,
                                           temperature=1.0, seed=11, logprobs=True,
                                           top_logprobs=5)
    assert health(server)["dense_decode_steps"] == steps  # alone: on the file's weights
    assert again.choices[0].finish_reason in ("stop", "length")
    if split(server):
        assert first_token(again) == first_token(first)
        assert again.choices[0].logprobs.content[0].token == \
            first.choices[0].logprobs.content[0].token


def test_dense_decode_on_with_deterministic_is_a_one_line_start_up_error() -> None:
    tail = start_up_error(["--dense-decode", "on"])  # the suite adds --deterministic
    assert "--dense-decode on cannot keep --deterministic's guarantee" in tail


def test_a_deterministic_server_decodes_on_the_file_weights_only() -> None:
    with running_server(["--max-sequences", "4", "--ctx-size", "1024"]) as s:
        h = health(s)
        assert "batches" not in h["weights"] and "dense_decode_steps" not in h
