"""The native loop that steps a lone sequence (`--solo-loop`, on by default) changes how
a token is made, never which: the suite's server against one with it off, alone and
when a second request arrives in the middle of a run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from .conftest import ServerProcess, running_server

pytestmark = pytest.mark.timeout(300)

STORY = [{"role": "user", "content": "Write a story about a lighthouse keeper."}]
NO_END = {"0": -100, "2": -100}  # SmolLM2's end tokens banned: runs to max_tokens
REQUESTS: list[dict[str, Any]] = [
    {"temperature": 0, "max_tokens": 96},
    {"temperature": 1.0, "seed": 11, "max_tokens": 96},
    {"temperature": 0.7, "seed": 5, "max_tokens": 80,
     "logit_bias": {**NO_END, "13": -100, "260": 4}},  # a ban and a bias in the row
    {"temperature": 0, "max_tokens": 40, "logit_bias": NO_END},  # ends at the limit
    {"temperature": 0.9, "seed": 3, "max_tokens": 96, "stop": ["."]},
]


@pytest.fixture(scope="module")
def python_steps() -> Iterator[ServerProcess]:
    with running_server(["--solo-loop", "off"]) as server:
        yield server


@pytest.fixture(scope="module")
def unbroken_runs() -> Iterator[ServerProcess]:
    """Speculation off: nothing ends a run early but the sequence's end or a wake-up."""
    with running_server(["--speculate", "off"]) as server:
        yield server


def _solo_tokens(url: str) -> int:
    return int(httpx.get(url + "/health").json()["solo_tokens"])


def _answer(url: str, model: str, request: dict[str, Any]) -> tuple[str, str, int]:
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120) as c:
        r = c.chat.completions.create(model=model, messages=STORY, **request)
    choice = r.choices[0]
    return choice.message.content or "", choice.finish_reason, r.usage.completion_tokens


def test_same_tokens_with_and_without_the_native_loop(server_url: str,
                                                      python_steps: ServerProcess,
                                                      model_id: str) -> None:
    before = _solo_tokens(server_url)
    native = [_answer(server_url, model_id, r) for r in REQUESTS]
    assert _solo_tokens(server_url) > before  # the loop made some of them
    reference = [_answer(python_steps.url, model_id, r) for r in REQUESTS]
    assert _solo_tokens(python_steps.url) == 0
    assert native == reference
    assert native[3][1:] == ("length", 40)
    text, finish, _ = native[4]
    assert finish == "stop" and "." not in text


def test_a_stream_is_the_same_text_a_token_at_a_time(server_url: str,
                                                     model_id: str) -> None:
    request = {"temperature": 0, "max_tokens": 64, "logit_bias": NO_END}
    with openai.OpenAI(base_url=server_url + "/v1", api_key="x", max_retries=0) as c:
        pieces = [chunk.choices[0].delta.content
                  for chunk in c.chat.completions.create(model=model_id, messages=STORY,
                                                         stream=True, **request)
                  if chunk.choices and chunk.choices[0].delta.content]
    text, finish, tokens = _answer(server_url, model_id, request)
    assert "".join(pieces) == text and finish == "length"
    assert len(pieces) >= tokens - 8  # one chunk a token, but for held-back bytes


def test_a_request_arriving_mid_run_gets_its_own_answer(unbroken_runs: ServerProcess,
                                                        python_steps: ServerProcess,
                                                        model_id: str) -> None:
    """A long stream runs alone (in the native loop); a second request arrives in
    the middle of it, which ends the run so both decode together. Each still gets
    exactly what it gets alone on a server that steps everything in Python."""
    long_request = {"temperature": 0, "max_tokens": 400, "logit_bias": NO_END}
    second = {"temperature": 1.0, "seed": 21, "max_tokens": 48}
    server_url = unbroken_runs.url
    started = threading.Event()
    streamed: list[str] = []

    def stream_long() -> None:
        with openai.OpenAI(base_url=server_url + "/v1", api_key="x", max_retries=0,
                           timeout=120) as c:
            for chunk in c.chat.completions.create(model=model_id, messages=STORY,
                                                   stream=True, **long_request):
                if chunk.choices and chunk.choices[0].delta.content:
                    streamed.append(chunk.choices[0].delta.content)
                    if len(streamed) == 40:
                        started.set()

    before = _solo_tokens(server_url)
    worker = threading.Thread(target=stream_long)
    worker.start()
    assert started.wait(120)
    assert _solo_tokens(server_url) > before  # the long one is in the native loop now
    arrived = _answer(server_url, model_id, second)
    # It did not wait for the run to end: the stream was still going when it returned.
    assert len(streamed) < 380
    worker.join(120)
    assert arrived == _answer(python_steps.url, model_id, second)
    assert "".join(streamed) == _answer(python_steps.url, model_id, long_request)[0]
