"""Where answers come from: the engine in this process, or an OpenAI-compatible server.

Both stream text pieces of one chat completion and fill a `TurnStats`; both raise
`BackendError` with the message a user should see (the API's own, for a server).
Leaving a stream early (Ctrl+C) stops the generation: in-process the engine cancels
the sequence within one step, over HTTP the closed connection tells the server.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx


class BackendError(Exception):
    """A request that failed; `str()` is the message to print."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class TurnStats:
    """One answer's numbers, for /stats."""

    started: float
    first_token: float | None = None
    ended: float | None = None
    pieces: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    stopped: bool = False

    def piece(self) -> None:
        self.pieces += 1
        if self.first_token is None:
            self.first_token = time.perf_counter()

    @property
    def tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else self.pieces

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed: tokens after the first over the time since the first."""
        if self.first_token is None or self.ended is None or self.tokens < 2:
            return None
        seconds = self.ended - self.first_token
        return (self.tokens - 1) / seconds if seconds > 0 else None


class ChatBackend(Protocol):
    model: str

    def stream(self, request: dict[str, Any], stats: TurnStats) -> AsyncIterator[str]:
        """Text pieces of the answer to `request` (a Chat Completions body)."""
        ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- HTTP


def api_base(url: str) -> str:
    """`http://host:8000` and `http://host:8000/v1` both mean the /v1 API, as for the
    openai client's base_url; any other path is taken as given."""
    url = url.rstrip("/")
    path = httpx.URL(url).path
    return url + "/v1" if path in ("", "/") else url


def _error_message(response: httpx.Response, body: bytes) -> str:
    try:
        error = json.loads(body)["error"]
        message = error["message"] if isinstance(error, dict) else str(error)
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace").strip()[:500] or response.reason_phrase
    return f"{message} (HTTP {response.status_code})"


class HTTPBackend:
    """Any OpenAI-compatible server, through its /v1/chat/completions stream."""

    def __init__(self, base_url: str, api_key: str | None, model: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base = api_base(base_url)
        self.client = httpx.AsyncClient(headers=headers,
                                        timeout=httpx.Timeout(600.0, connect=10.0))
        self.model = model or ""

    async def connect(self) -> None:
        """Pick the server's first model unless one was named; fails early when the
        server cannot be reached or refuses the key."""
        if self.model:
            return
        try:
            response = await self.client.get(self.base + "/models")
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach {self.base}: {exc}") from exc
        if response.status_code != 200:
            raise BackendError(_error_message(response, response.content),
                               response.status_code)
        models = response.json().get("data") or []
        if not models:
            raise BackendError(f"{self.base}/models lists no model; name one with "
                               "--model-name")
        self.model = models[0]["id"]

    async def stream(self, request: dict[str, Any], stats: TurnStats) -> AsyncIterator[str]:
        body = {**request, "model": self.model, "stream": True,
                "stream_options": {"include_usage": True}}
        try:
            async with self.client.stream("POST", self.base + "/chat/completions",
                                          json=body) as response:
                if response.status_code != 200:
                    raise BackendError(_error_message(response, await response.aread()),
                                       response.status_code)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    for text in _chunk_texts(json.loads(data), stats):
                        stats.piece()
                        yield text
        except httpx.HTTPError as exc:
            raise BackendError(f"request to {self.base} failed: {exc}") from exc

    async def aclose(self) -> None:
        await self.client.aclose()


def _chunk_texts(chunk: dict[str, Any], stats: TurnStats) -> list[str]:
    if "error" in chunk:
        error = chunk["error"]
        raise BackendError(error.get("message", str(error)) if isinstance(error, dict)
                           else str(error))
    usage = chunk.get("usage")
    if usage:
        stats.prompt_tokens = usage.get("prompt_tokens")
        stats.completion_tokens = usage.get("completion_tokens")
    texts = []
    for choice in chunk.get("choices") or []:
        text = (choice.get("delta") or {}).get("content")
        if text:
            texts.append(text)
        if choice.get("finish_reason"):
            stats.finish_reason = choice["finish_reason"]
    return texts


# --------------------------------------------------------------------------- in-process


class LocalBackend:
    """The model in this process: the server's own runtime (engine + chat service),
    called through the chat layer's seam instead of HTTP."""

    def __init__(self, runtime: Any) -> None:  # chatd.server.Runtime
        self.runtime = runtime
        self.model = runtime.model_name
        runtime.engine.start()

    async def stream(self, request: dict[str, Any], stats: TurnStats) -> AsyncIterator[str]:
        from pydantic import ValidationError

        from chatd.api.protocol import ChatCompletionRequest
        from chatd.chat.errors import ChatRequestError, GenerationFailed
        from chatd.chat.generation import UsageCount

        try:
            body = ChatCompletionRequest.model_validate(
                {**request, "model": self.model, "stream": True})
            prepared = await self.runtime.chat.prepare(body)
        except ValidationError as exc:
            raise BackendError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                         for e in exc.errors())) from exc
        except ChatRequestError as exc:
            raise BackendError(exc.message) from exc
        except ValueError as exc:
            raise BackendError(str(exc)) from exc
        usage = UsageCount()
        try:
            async with contextlib.aclosing(
                    self.runtime.chat.run(prepared, usage, streaming=True)) as deltas:
                async for delta in deltas:
                    if delta.content:
                        stats.piece()
                        yield delta.content
                    if delta.finish_reason:
                        stats.finish_reason = delta.finish_reason
        except GenerationFailed as exc:
            raise BackendError(f"generation failed: {exc}") from exc
        finally:
            stats.prompt_tokens = usage.prompt_tokens
            stats.completion_tokens = usage.completion_tokens

    async def aclose(self) -> None:
        self.runtime.close()
