"""Speculative decoding (prompt lookup) changes how many tokens a step emits, never
which: a server that takes every guess (`--speculate always`) against one with
speculation off. (The default, `ngram`, takes only the guesses that pay for their
rows on the machine at hand, which on a compute-bound CPU can be none.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from .conftest import running_server

TEXT = ("The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins "
        "with a single step. All that glitters is not gold. Actions speak louder than "
        "words. Every cloud has a silver lining. Fortune favors the bold.")
REPEAT = [{"role": "user", "content": "Repeat this text exactly, word for word:\n\n" + TEXT}]
CHAT = [{"role": "user", "content": "Tell me about your favourite season."}]
SETTINGS = [{"temperature": 0}, {"temperature": 1.0, "seed": 7},
            {"temperature": 0.7, "top_p": 0.9, "seed": 3, "presence_penalty": 0.3}]


@pytest.fixture(scope="module")
def plain_url() -> Iterator[str]:
    with running_server(["--speculate", "off"]) as server:
        yield server.url


@pytest.fixture(scope="module")
def spec_url() -> Iterator[str]:
    with running_server(["--speculate", "always"]) as server:
        yield server.url


def _spec_counters(url: str) -> tuple[int, int]:
    health = httpx.get(url + "/health").json()
    return health["spec_drafted_tokens"], health["spec_accepted_tokens"]


async def _texts(url: str, model: str, requests: list[dict[str, Any]]) -> list[str]:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0,
                                  timeout=120) as c:
        replies = await asyncio.gather(*(
            c.chat.completions.create(model=model, max_tokens=96, **r) for r in requests))
    return [r.choices[0].message.content for r in replies]


def test_same_text_with_and_without_speculation(spec_url: str, plain_url: str,
                                                model_id: str) -> None:
    requests = [{"messages": m, **s} for m in (REPEAT, CHAT) for s in SETTINGS]
    before = _spec_counters(spec_url)
    alone = [asyncio.run(_texts(spec_url, model_id, [r]))[0] for r in requests]
    drafted, accepted = (a - b for a, b in zip(_spec_counters(spec_url), before,
                                               strict=True))
    assert drafted > 0 and accepted > 0  # the repeated text was drafted and taken
    assert _spec_counters(plain_url) == (0, 0)
    reference = [asyncio.run(_texts(plain_url, model_id, [r]))[0] for r in requests]
    assert alone == reference


def test_same_text_under_load(spec_url: str, plain_url: str, model_id: str) -> None:
    """Six at once: speculation turns off and on as sequences come and go; every
    request still gets what it gets alone without speculation."""
    requests = [{"messages": m, **s} for m in (REPEAT, CHAT) for s in SETTINGS]
    together = asyncio.run(_texts(spec_url, model_id, requests))
    reference = [asyncio.run(_texts(plain_url, model_id, [r]))[0] for r in requests]
    assert together == reference


def test_stream_with_speculation_matches(spec_url: str, model_id: str,
                                         plain_url: str) -> None:
    body = {"model": model_id, "messages": REPEAT, "max_tokens": 96, "temperature": 0}
    with openai.OpenAI(base_url=spec_url + "/v1", api_key="x", max_retries=0) as client:
        streamed = "".join(chunk.choices[0].delta.content or ""
                           for chunk in client.chat.completions.create(**body, stream=True)
                           if chunk.choices)
    assert streamed == asyncio.run(_texts(plain_url, model_id,
                                          [{"messages": REPEAT, "temperature": 0}]))[0]
