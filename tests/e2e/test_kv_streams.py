"""One KV stream per sequence (`--kv-layout split`, what `auto` picks when the pool
holds a full context for every sequence): prefixes are copied between streams
instead of shared, so check that chats, shared system prompts, `n` and more
requests than streams all still work, on a real server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e.conftest import (
    ServerProcess,
    concurrent_stops_limits_and_schemas,
    openai_client,
    running_server,
)

pytestmark = pytest.mark.timeout(300)

CTX = 1536  # six 256-cell blocks: what llama.cpp gives each stream
ARGS = ["--kv-cache", "f16", "--max-sequences", "4", "--ctx-size", str(CTX),
        "--kv-cells", str(8 * CTX)]


@pytest.fixture(scope="module")
def split_server() -> Iterator[ServerProcess]:
    with running_server(ARGS) as server:
        yield server


@pytest.fixture(scope="module")
def split(split_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai_client(split_server) as c:
        yield c


def test_auto_layout_is_split_when_each_sequence_gets_a_full_context(
        split_server: ServerProcess, server_url: str) -> None:
    health = httpx.get(split_server.url + "/health").json()
    assert health["kv_layout"] == "split" and health["kv_cells_total"] == 8 * CTX
    # The suite's main server keeps one pool: --deterministic, and 4 x ctx cells.
    assert httpx.get(server_url + "/health").json()["kv_layout"] == "unified"


def test_a_chats_next_turn_reuses_its_stream(split: openai.OpenAI, model_id: str) -> None:
    messages = [{"role": "user", "content": "Name three rivers of Europe, one per line."}]
    first = split.chat.completions.create(model=model_id, messages=messages, max_tokens=30,
                                          temperature=0)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "Which of them is the longest?"}]
    second = split.chat.completions.create(model=model_id, messages=messages, max_tokens=8,
                                           temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens


def test_a_shared_system_prompt_is_copied_to_other_chats(split_server: ServerProcess,
                                                         split: openai.OpenAI,
                                                         model_id: str) -> None:
    """A chat longer than twice the system prompt only starts like the others' (a
    prompt sharing at least half of an entry would be taken as its next turn)."""
    system = {"role": "system",
              "content": " ".join(f"Rule {i}: answer in plain words." for i in range(15))}
    system_tokens = split.chat.completions.create(
        model=model_id, messages=[system], max_tokens=1).usage.prompt_tokens
    assert system_tokens > 100
    chats = [[system, {"role": "user", "content": f"Question {i}: what is {i} + {i}? "
                                                  + "Explain it slowly. " * 60}]
             for i in range(3)]
    first = split.chat.completions.create(model=model_id, messages=chats[0], max_tokens=4)
    assert first.usage.prompt_tokens > 2 * system_tokens
    copied = httpx.get(split_server.url + "/health").json()["prefix_cache_copied_tokens"]
    for messages in chats[1:]:
        r = split.chat.completions.create(model=model_id, messages=messages, max_tokens=4)
        assert r.usage.prompt_tokens_details.cached_tokens >= system_tokens - 8
    health = httpx.get(split_server.url + "/health").json()
    assert health["prefix_cache_copied_tokens"] >= copied + 2 * (system_tokens - 8)
    again = split.chat.completions.create(model=model_id, messages=chats[0], max_tokens=4)
    assert again.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens - 1


def test_n_choices_each_get_a_stream(split: openai.OpenAI, model_id: str) -> None:
    r = split.chat.completions.create(
        model=model_id, n=3, max_tokens=12, temperature=1.0, seed=7,
        messages=[{"role": "user", "content": "Write a line about the moon."}])
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") and c.message.content for c in r.choices)
    assert r.usage.completion_tokens <= 3 * 12
    assert len({c.message.content for c in r.choices}) > 1


def test_a_prompt_that_fills_a_stream_works_and_one_past_it_is_refused(
        split: openai.OpenAI, model_id: str) -> None:
    words = " ".join(f"w{i}" for i in range(365))  # ~1,420 tokens
    r = split.chat.completions.create(model=model_id, max_tokens=8,
                                      messages=[{"role": "user", "content": words}])
    assert CTX - 400 < r.usage.prompt_tokens + 8 <= CTX
    with pytest.raises(openai.BadRequestError, match="context"):
        split.chat.completions.create(model=model_id, max_tokens=CTX,
                                      messages=[{"role": "user", "content": words}])


def test_more_requests_than_streams_keep_stops_limits_and_schemas(
        split_server: ServerProcess, model_id: str) -> None:
    concurrent_stops_limits_and_schemas(split_server.url, model_id, streams=7, structured=3)
    stats = httpx.get(split_server.url + "/health").json()
    assert stats["running_sequences"] == 0 and stats["kv_cells_running"] == 0
    assert stats["kv_cells_allocated"] == stats["kv_cells_cached"] > 0
