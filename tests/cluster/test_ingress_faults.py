"""The ingress when engine replicas die, seen through the official `openai` client.

The replica deaths are injected at the Ray handle (a stand-in for Serve's streaming
handle whose calls fail as a dead replica's do), because on a real cluster the
ingress's own retry, which waits for Serve's replacement replica, answers every
request that a single death hits (tests/cluster/test_cluster.py): the 503 path needs
two deaths in a row, which a cluster cannot be made to produce on cue.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.cluster.conftest import require_ray

require_ray()

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import Response  # noqa: E402
from ray.exceptions import ActorDiedError  # noqa: E402

from chatd.cluster.ingress import Ingress  # noqa: E402

Message = dict[str, Any]

COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def _json_response(body: dict[str, Any]) -> list[Message]:
    return [{"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"application/json")]},
            {"type": "http.response.body", "body": json.dumps(body).encode(),
             "more_body": False}]


def _chunk(content: str) -> bytes:
    chunk = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 0,
             "model": "m", "choices": [{"index": 0, "delta": {"content": content},
                                        "finish_reason": None}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


class _Stream:
    """One engine call: its response messages, or a death before (`None`) or after
    the messages given."""

    def __init__(self, messages: list[Message] | None, die_after: bool) -> None:
        self._messages = messages
        self._die_after = die_after

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Message:
        if self._messages is None or (not self._messages and self._die_after):
            raise ActorDiedError()
        if not self._messages:
            raise StopAsyncIteration
        return self._messages.pop(0)

    def cancel(self) -> None:
        pass


class DyingEngine:
    """The engine deployment's handle: the first `deaths` calls reach a replica that
    dies before answering; later ones answer with `messages` (and die after them when
    `die_after`)."""

    def __init__(self, deaths: int, messages: list[Message], die_after: bool = False
                 ) -> None:
        self.deaths = deaths
        self.messages = messages
        self.die_after = die_after
        self.calls = 0

    def options(self, **_: Any) -> DyingEngine:
        return self

    def remote(self, call: Message, body: bytes, **kwargs: Any) -> _Stream:
        self.calls += 1
        alive = self.calls > self.deaths
        return _Stream(list(self.messages) if alive else None, self.die_after)


def _client(engine: DyingEngine, seen: list[int]) -> openai.AsyncOpenAI:
    ingress = Ingress(engine)
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def relay(request: Request) -> Response:
        return await ingress.forward(request)

    async def record(response: httpx.Response) -> None:
        seen.append(response.status_code)

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             event_hooks={"response": [record]})
    return openai.AsyncOpenAI(base_url="http://chatd/v1", api_key="k", http_client=http)


MESSAGES = [{"role": "user", "content": "Hi"}]


async def test_one_death_is_retried_inside_the_ingress() -> None:
    engine, seen = DyingEngine(1, _json_response(COMPLETION)), []
    reply = await _client(engine, seen).chat.completions.create(model="m",
                                                                messages=MESSAGES)
    assert reply.choices[0].message.content == "hello"
    assert engine.calls == 2 and seen == [200]  # the client never saw the death


async def test_two_deaths_give_a_503_the_official_client_retries() -> None:
    engine, seen = DyingEngine(2, _json_response(COMPLETION)), []
    reply = await _client(engine, seen).chat.completions.create(model="m",
                                                                messages=MESSAGES)
    assert reply.choices[0].message.content == "hello"
    assert engine.calls == 3 and seen == [503, 200]


async def test_without_retries_the_client_reads_the_503_envelope() -> None:
    engine, seen = DyingEngine(2, _json_response(COMPLETION)), []
    client = _client(engine, seen).with_options(max_retries=0)
    with pytest.raises(openai.InternalServerError) as err:
        await client.chat.completions.create(model="m", messages=MESSAGES)
    assert err.value.status_code == 503
    assert err.value.response.headers["x-should-retry"] == "true"
    assert err.value.body["code"] == "replica_unavailable"  # type: ignore[index]
    assert "retry" in err.value.message


async def test_a_death_mid_stream_ends_it_with_the_error_event() -> None:
    stream = [{"type": "http.response.start", "status": 200,
               "headers": [(b"content-type", b"text/event-stream")]},
              {"type": "http.response.body", "body": _chunk("Hel"), "more_body": True},
              {"type": "http.response.body", "body": _chunk("lo"), "more_body": True}]
    engine, seen = DyingEngine(0, stream, die_after=True), []
    got = []
    with pytest.raises(openai.APIError) as err:
        async for chunk in await _client(engine, seen).chat.completions.create(
                model="m", messages=MESSAGES, stream=True):
            got.append(chunk.choices[0].delta.content)
    assert got == ["Hel", "lo"]  # what was streamed arrives, then the error, not a cut
    assert "retry" in err.value.message
    assert engine.calls == 1  # a stream that started is never sent again
