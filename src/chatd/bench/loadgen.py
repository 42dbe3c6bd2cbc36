"""A closed-loop load generator for any OpenAI-compatible Chat Completions server.

Closed loop: `concurrency` clients, each with its own single HTTP connection, send
streaming requests back to back, so the server always has exactly `concurrency`
requests in flight. That is the load a batching engine is built for, and it makes
the summed token rate directly comparable with the engine's batch-B ceiling.

Per request it records the time to the first content token (TTFT), the gaps
between content chunks (inter-token latency, ITL: with one token per SSE chunk,
as OpenAI and chatd send them, a gap is a token), the total time and the
completion tokens from the final usage chunk. `logit_bias` can ban the
end-of-turn tokens so every request produces exactly `max_tokens` tokens and runs
are comparable.

Used as `chatd bench --url ...` (see `add_arguments` / `run_from_args`) or from
Python through `run_load`.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import math
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from chatd.bench.plainhttp import PlainConnection

T = TypeVar("T")

DEFAULT_PROMPT = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a "
    "bottle. Describe the sea, the weather and the keeper's daily routine."
)
DEFAULT_MAX_TOKENS = 128
DEFAULT_CONCURRENCY = (1, 4, 8, 16)


# ---- statistics ---------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks.

    This is the "type 7" estimator (numpy's default `linear` method): sort the n
    values, take rank h = (n - 1) * q / 100 and interpolate between the values at
    floor(h) and ceil(h). It is continuous in q and exact at the min (q=0), the
    median of an odd count (q=50) and the max (q=100). Returns None for no values,
    so an empty measurement never looks like a zero-latency one.
    """
    if not 0 <= q <= 100 or math.isnan(q):
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    data = sorted(values)
    if not data:
        return None
    h = (len(data) - 1) * q / 100.0
    lo = math.floor(h)
    hi = math.ceil(h)
    return data[lo] + (data[hi] - data[lo]) * (h - lo)


# ---- SSE parsing --------------------------------------------------------------------


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched server-sent event: its `event:` type and joined `data:` lines."""

    data: str
    event: str = "message"


class SSEDecoder:
    """Incremental text/event-stream parser (WHATWG rules), fed arbitrary text chunks.

    Network reads split lines anywhere (even between the CR and LF of a CRLF), so
    the decoder keeps the unfinished tail. Lines may end in LF, CRLF or CR; a blank
    line dispatches the event; `:` lines are comments (keep-alives); several `data:`
    lines of one event are joined with newlines; one space after the colon is
    dropped. `id:` and `retry:` are accepted and ignored.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._data: list[str] = []
        self._event = ""

    def feed(self, text: str) -> list[SSEEvent]:
        """Add a chunk of the stream; return the events it completed."""
        self._buf += text
        events: list[SSEEvent] = []
        while True:
            cut = _line_end(self._buf)
            if cut is None:
                break
            end, nxt = cut
            line = self._buf[:end]
            self._buf = self._buf[nxt:]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a final event that lacks its blank line is still delivered.

        The spec discards such an event; a load generator is more useful when it
        is lenient and reports what the server did send.
        """
        events = []
        if self._buf:
            line, self._buf = self._buf.rstrip("\r"), ""
            event = self._line(line)
            if event is not None:
                events.append(event)
        event = self._line("")
        if event is not None:
            events.append(event)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent(data="\n".join(self._data), event=self._event or "message")
            self._data = []
            self._event = ""
            return event
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def _line_end(buf: str) -> tuple[int, int] | None:
    """(end of the first line, start of the next), or None if no complete line yet."""
    lf = buf.find("\n")
    cr = buf.find("\r")
    if cr == -1 and lf == -1:
        return None
    if cr == -1 or (lf != -1 and lf < cr):
        return lf, lf + 1
    # A CR: if it is the last character, the LF of a CRLF may still be on its way.
    if cr == len(buf) - 1:
        return None
    return cr, cr + 2 if buf[cr + 1] == "\n" else cr + 1


@dataclass
class ChunkInfo:
    """What one SSE data payload of a chat completion stream means to the benchmark."""

    done: bool = False
    content: str = ""
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None


def interpret_chunk(data: str, event: str = "message") -> ChunkInfo:
    """Classify one SSE payload: `[DONE]`, an error, content, usage (or several)."""
    if data.strip() == "[DONE]":
        return ChunkInfo(done=True)
    try:
        obj = json.loads(data)
    except json.JSONDecodeError:
        return ChunkInfo(error=f"invalid JSON in stream: {data[:120]!r}")
    if not isinstance(obj, dict):
        return ChunkInfo(error=f"unexpected stream payload: {data[:120]!r}")
    if event == "error" or "error" in obj:
        err = obj.get("error", obj)
        message = err.get("message", err) if isinstance(err, dict) else err
        return ChunkInfo(error=f"stream error: {str(message)[:200]}")
    info = ChunkInfo()
    parts = []
    for choice in obj.get("choices") or []:
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str):
            parts.append(delta["content"])
        if choice.get("finish_reason"):
            info.finish_reason = choice["finish_reason"]
    info.content = "".join(parts)
    usage = obj.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        info.completion_tokens = usage["completion_tokens"]
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        info.prompt_tokens = usage["prompt_tokens"]
    return info


# ---- requests ------------------------------------------------------------------------


@dataclass
class RequestResult:
    """Timings of one request, in seconds on the `time.perf_counter` clock."""

    client: int
    index: int
    start: float
    end: float = 0.0
    ttft: float | None = None  # start -> first non-empty content chunk
    itls: list[float] = field(default_factory=list)  # gaps between content chunks
    content_chunks: int = 0
    completion_tokens: int = 0
    prompt_tokens: int | None = None  # from the usage the server reports
    usage_reported: bool = False
    finish_reason: str | None = None
    error: str | None = None
    last_content_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def decode_tokens_per_s(self) -> float | None:
        """This stream's own rate after its first token (what one user sees)."""
        if self.ttft is None or self.completion_tokens < 2:
            return None
        span = self.latency - self.ttft
        return (self.completion_tokens - 1) / span if span > 0 else None


def normalise_base_url(url: str) -> str:
    """'host:8000', 'http://h:8000/', 'http://h:8000/v1/' -> 'http://h:8000/v1'."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if url.endswith("/chat/completions"):
        url = url.removesuffix("/chat/completions")
    if not url.endswith("/v1"):
        url += "/v1"
    return url


def build_payload(
    model: str,
    prompt: str,
    max_tokens: int,
    *,
    stream: bool = True,
    temperature: float = 0.7,
    seed: int | None = None,
    ban_tokens: Sequence[int] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The chat completion request body every client sends (with its own seed)."""
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": stream,
    }
    if stream:
        payload["stream_options"] = {"include_usage": True}
    if seed is not None:
        payload["seed"] = seed
    if ban_tokens:
        payload["logit_bias"] = {str(int(t)): -100 for t in ban_tokens}
    if extra:
        payload.update(extra)
    return payload


async def _send(
    client: httpx.AsyncClient, url: str, payload: dict[str, Any], result: RequestResult,
    plain: PlainConnection | None = None,
) -> None:
    """Run one request, filling `result`; errors become `result.error`, never raise."""
    result.start = time.perf_counter()
    try:
        if payload.get("stream") and plain is not None:
            await _send_stream_plain(plain, url, payload, result)
        elif payload.get("stream"):
            await _send_stream(client, url, payload, result)
        else:
            await _send_plain(client, url, payload, result)
    except Exception as exc:  # a benchmark reports failures, it does not die of them
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    result.end = time.perf_counter()


async def _send_stream(
    client: httpx.AsyncClient, url: str, payload: dict[str, Any], result: RequestResult
) -> None:
    async with client.stream("POST", url, json=payload) as resp:
        if resp.status_code != 200:
            body = (await resp.aread()).decode("utf-8", errors="replace")
            result.error = f"HTTP {resp.status_code}: {body[:200]}"
            return
        sink = _SSESink(result)
        async for piece in resp.aiter_bytes():
            sink.feed(piece)
        sink.close()


async def _send_stream_plain(
    conn: PlainConnection, url: str, payload: dict[str, Any], result: RequestResult
) -> None:
    """`_send_stream` over a PlainConnection (the cheap client; see chatd.bench.plainhttp)."""
    sink = _SSESink(result)
    status = await conn.post(url, json.dumps(payload).encode(), sink)
    if status != 200:
        result.error = f"HTTP {status}: {sink.error_text()[:200]}"
        return
    sink.close()


class _SSESink:
    """Folds a streamed body into a RequestResult as each network read arrives (for
    a PlainConnection, inside its callback); an error status's body is kept instead."""

    def __init__(self, result: RequestResult) -> None:
        self.result = result
        self.ok = True
        self.done = False
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._events = SSEDecoder()
        self._raw = bytearray()

    def start(self, status: int) -> None:
        self.ok = status == 200

    def feed(self, data: bytes) -> None:
        if not self.ok:
            self._raw += data[:1000 - len(self._raw)]
            return
        now = time.perf_counter()  # events of one network read arrive together
        for ev in self._events.feed(self._text.decode(data)):
            self.done = apply_event(self.result, ev, now) or self.done

    def close(self) -> None:
        now = time.perf_counter()
        for ev in self._events.feed(self._text.decode(b"", final=True)) + self._events.close():
            self.done = apply_event(self.result, ev, now) or self.done
        if self.result.error is None and not self.done:
            self.result.error = "stream ended without data: [DONE]"

    def error_text(self) -> str:
        return self._raw.decode("utf-8", errors="replace")


def apply_event(result: RequestResult, ev: SSEEvent, now: float) -> bool:
    """Fold one SSE event received at `now` into `result`; True when it was `[DONE]`."""
    info = interpret_chunk(ev.data, ev.event)
    if info.error and result.error is None:
        result.error = info.error
    if info.content:
        if result.last_content_at is None:
            result.ttft = now - result.start
        else:
            result.itls.append(now - result.last_content_at)
        result.last_content_at = now
        result.content_chunks += 1
        if not result.usage_reported:
            result.completion_tokens = result.content_chunks  # a token a chunk, until usage
    if info.completion_tokens is not None:
        result.completion_tokens = info.completion_tokens
        result.usage_reported = True
    if info.prompt_tokens is not None:
        result.prompt_tokens = info.prompt_tokens
    if info.finish_reason:
        result.finish_reason = info.finish_reason
    return info.done


async def _send_plain(
    client: httpx.AsyncClient, url: str, payload: dict[str, Any], result: RequestResult
) -> None:
    resp = await client.post(url, json=payload)
    if resp.status_code != 200:
        result.error = f"HTTP {resp.status_code}: {resp.text[:200]}"
        return
    body = resp.json()
    result.ttft = time.perf_counter() - result.start  # no streaming: first token = all
    usage = body.get("usage") or {}
    result.completion_tokens = int(usage.get("completion_tokens") or 0)
    result.usage_reported = "completion_tokens" in usage
    result.prompt_tokens = usage.get("prompt_tokens")
    choices = body.get("choices") or [{}]
    result.finish_reason = choices[0].get("finish_reason")


# ---- aggregation -----------------------------------------------------------------------


@dataclass
class LoadResult:
    """One closed-loop run at one concurrency: aggregates plus every request.

    Latencies are in seconds. `tokens_per_s` is the completion tokens of the
    successful requests over the wall-clock window from the first request's start
    to the last one's end, so it includes ramp-up and drain, as a user would see.
    """

    url: str
    model: str
    concurrency: int
    max_tokens: int
    stream: bool
    wall_s: float
    requests: list[RequestResult] = field(repr=False)
    warmup_error: str | None = None
    client_cpu_s: float | None = None  # this generator's CPU over the timed window

    @property
    def ok_requests(self) -> list[RequestResult]:
        return [r for r in self.requests if r.ok]

    @property
    def errors(self) -> int:
        return sum(not r.ok for r in self.requests)

    @property
    def error_sample(self) -> str | None:
        return next((r.error for r in self.requests if r.error), None)

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.ok_requests)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def short_requests(self) -> int:
        """Successful requests that stopped before max_tokens (EOS not banned?)."""
        return sum(r.completion_tokens < self.max_tokens for r in self.ok_requests)

    def ttft(self, q: float) -> float | None:
        return percentile((r.ttft for r in self.ok_requests if r.ttft is not None), q)

    def itl(self, q: float) -> float | None:
        """Pooled over all gaps of all successful requests (each gap one sample)."""
        return percentile((g for r in self.ok_requests for g in r.itls), q)

    def summary(self) -> dict[str, Any]:
        """The aggregate figures, JSON-ready (seconds, tokens/s)."""
        ok = self.ok_requests
        rates = [x for r in ok if (x := r.decode_tokens_per_s) is not None]
        prompts = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
        return {
            "url": self.url,
            "model": self.model,
            "concurrency": self.concurrency,
            "max_tokens": self.max_tokens,
            "stream": self.stream,
            "requests": len(self.requests),
            "ok": len(ok),
            "errors": self.errors,
            "error_sample": self.error_sample,
            "warmup_error": self.warmup_error,
            "short_requests": self.short_requests,
            "client_cpu_ms_per_token": (
                _round(1000 * self.client_cpu_s / self.completion_tokens, 3)
                if self.client_cpu_s is not None and self.completion_tokens else None),
            "completion_tokens": self.completion_tokens,
            "prompt_tokens_mean": round(sum(prompts) / len(prompts), 1) if prompts else None,
            "wall_s": round(self.wall_s, 3),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "ttft_p50_s": _round(self.ttft(50)),
            "ttft_p90_s": _round(self.ttft(90)),
            "itl_p50_s": _round(self.itl(50)),
            "itl_p90_s": _round(self.itl(90)),
            "latency_p50_s": _round(percentile((r.latency for r in ok), 50)),
            "stream_tokens_per_s_p50": _round(percentile(rates, 50), 2),
            "percentile_method": "linear interpolation between closest ranks (numpy 'linear')",
        }

    def to_dict(self, include_requests: bool = False) -> dict[str, Any]:
        data = self.summary()
        if include_requests:
            t0 = min((r.start for r in self.requests), default=0.0)
            data["per_request"] = [
                {
                    **{k: v for k, v in asdict(r).items() if k not in {"itls", "last_content_at"}},
                    "start": round(r.start - t0, 4),
                    "end": round(r.end - t0, 4),
                    "itl_mean_s": _round(sum(r.itls) / len(r.itls)) if r.itls else None,
                }
                for r in self.requests
            ]
        return data


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# ---- the closed loop ----------------------------------------------------------------------


def _client(
    base_url: str,
    api_key: str | None,
    timeout: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """One connection per simulated user, so concurrency means requests in flight."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        base_url=base_url,
        transport=transport,
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=10.0),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


def _plain(base_url: str, api_key: str | None, timeout: float) -> PlainConnection | None:
    """The cheap streaming client where it can serve (plain http://), else None."""
    if not base_url.startswith("http://"):
        return None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return PlainConnection(base_url, headers, timeout)


async def detect_model(
    url: str,
    api_key: str | None = None,
    timeout: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> str:
    """The first id listed by GET /v1/models, for servers whose model name we don't know."""
    async with _client(normalise_base_url(url), api_key, timeout, transport) as client:
        resp = await client.get("/models")
        resp.raise_for_status()
        data = resp.json().get("data") or []
        if not data:
            raise RuntimeError("GET /v1/models listed no models")
        return str(data[0]["id"])


async def run_load(
    url: str,
    model: str | None,
    concurrency: int,
    requests_per_client: int | None = None,
    duration: float | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    prompt: str | Callable[[int, int], str] = DEFAULT_PROMPT,
    api_key: str | None = None,
    ban_tokens: list[int] | None = None,
    stream: bool = True,
    *,
    temperature: float = 0.7,
    seed: int = 1234,
    warmup: bool = True,
    timeout: float = 300.0,
    transport: httpx.AsyncBaseTransport | None = None,
    extra_body: dict[str, Any] | None = None,
) -> LoadResult:
    """Drive `url` with `concurrency` closed-loop clients and measure the run.

    Each client sends `requests_per_client` requests back to back, or keeps starting
    new ones until `duration` seconds have passed (requests already started finish).
    If neither is given each client sends `default_requests_per_client(concurrency)`.
    One untimed warm-up request goes first (connection set-up, first-call costs).
    `model=None` asks the server's /v1/models. Request seeds are distinct:
    `seed + 10000 * client + index`. `prompt` may be a function of (client, index)
    (the warm-up asks for client -1), e.g. for prompts no cache has seen.
    `transport` replaces the network (tests).
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if requests_per_client is None and duration is None:
        requests_per_client = default_requests_per_client(concurrency)
    base = normalise_base_url(url)
    model_id = model or await detect_model(base, api_key, transport=transport)
    endpoint = "/chat/completions"

    def payload(client_idx: int, index: int, n_tokens: int) -> dict[str, Any]:
        text = prompt if isinstance(prompt, str) else prompt(client_idx, index)
        return build_payload(model_id, text, n_tokens, stream=stream, temperature=temperature,
                             seed=seed + 10000 * client_idx + index, ban_tokens=ban_tokens,
                             extra=extra_body)

    # Clients are built before the clock starts: httpx builds an SSL context per
    # client (~25 ms of blocking CPU), which would otherwise stagger the starts and
    # inflate the TTFT of the clients already waiting.
    clients = [_client(base, api_key, timeout, transport) for _ in range(concurrency)]
    plain = [_plain(base, api_key, timeout) if transport is None else None
             for _ in range(concurrency)]
    results: list[RequestResult] = []
    warmup_error = None

    async def user(client_idx: int, deadline: float | None) -> None:
        client = clients[client_idx]
        i = 0
        while requests_per_client is None or i < requests_per_client:
            if deadline is not None and time.perf_counter() >= deadline:
                return
            res = RequestResult(client=client_idx, index=i, start=0.0)
            await _send(client, endpoint, payload(client_idx, i, max_tokens), res,
                        plain[client_idx])
            results.append(res)
            i += 1
            if res.error:
                await asyncio.sleep(0.05)  # do not spin on a dead server

    try:
        if warmup:
            warm = RequestResult(client=-1, index=0, start=0.0)
            await _send(clients[0], endpoint, payload(-1, 0, min(max_tokens, 16)), warm,
                        plain[0])
            warmup_error = warm.error
        deadline = None if duration is None else time.perf_counter() + duration
        cpu0 = time.thread_time()  # the clients all run on this thread's loop
        await asyncio.gather(*(user(c, deadline) for c in range(concurrency)))
        client_cpu = time.thread_time() - cpu0
    finally:
        await asyncio.gather(*(c.aclose() for c in clients),
                             *(p.aclose() for p in plain if p is not None))
    wall = max(r.end for r in results) - min(r.start for r in results) if results else 0.0
    results.sort(key=lambda r: r.start)
    return LoadResult(url=base, model=model_id, concurrency=concurrency, max_tokens=max_tokens,
                      stream=stream, wall_s=wall, requests=results, warmup_error=warmup_error,
                      client_cpu_s=client_cpu)


def run_client(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop where it is installed (with uvicorn[standard]): the
    load generator shares the cores with the server it measures, and every
    microsecond it spends per chunk is taken from that server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def default_requests_per_client(concurrency: int) -> int:
    """Enough requests for stable medians without long runs: 8 at c=1, 2 from c=4 up."""
    return max(2, 8 // concurrency)


# ---- command line ------------------------------------------------------------------------------


def parse_int_list(text: str) -> list[int]:
    """'1,4,8,16' -> [1, 4, 8, 16] (argparse type)."""
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected integers like 1,4,8, got {text!r}") from exc
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `chatd bench` options, added to the CLI author's (sub)parser."""
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1",
                        help="server base URL, with or without /v1")
    parser.add_argument("--model", default=None,
                        help="model id to send (default: first id from GET /v1/models)")
    parser.add_argument("--concurrency", type=parse_int_list, default=list(DEFAULT_CONCURRENCY),
                        help="clients in flight; a list runs one measurement each (1,4,8,16)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--requests-per-client", type=int, default=None,
                       help="requests each client sends (default: max(2, 8 // concurrency))")
    group.add_argument("--duration", type=float, default=None,
                       help="seconds each client keeps starting requests, instead of a count")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    parser.add_argument("--ban-token-ids", type=parse_int_list, default=None,
                        help="token ids given logit_bias -100 so every request runs to "
                             "--max-tokens (bundled SmolLM2: 0,1,2,4)")
    parser.add_argument("--no-stream", action="store_true",
                        help="non-streaming requests (TTFT is then the whole latency)")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request read timeout")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="write summaries and per-request timings as JSON to this path")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:.1f}"


def format_table(results: Sequence[LoadResult]) -> str:
    """A readable table, one row per concurrency (latencies in ms)."""
    head = (f"{'conc':>4} {'reqs':>5} {'err':>4} {'tok/s':>8} {'ttft p50':>9} {'ttft p90':>9} "
            f"{'itl p50':>8} {'itl p90':>8} {'tok/req':>8} {'wall s':>7}")
    lines = [head]
    for r in results:
        ok = r.ok_requests
        per_req = r.completion_tokens / len(ok) if ok else 0.0
        lines.append(
            f"{r.concurrency:>4} {len(r.requests):>5} {r.errors:>4} {r.tokens_per_s:>8.1f} "
            f"{_ms(r.ttft(50)):>9} {_ms(r.ttft(90)):>9} {_ms(r.itl(50)):>8} {_ms(r.itl(90)):>8} "
            f"{per_req:>8.1f} {r.wall_s:>7.1f}"
        )
    for r in results:
        if r.error_sample:
            lines.append(f"c={r.concurrency}: {r.errors} errors, e.g. {r.error_sample}")
        if r.warmup_error:
            lines.append(f"c={r.concurrency}: warm-up failed: {r.warmup_error}")
        if r.short_requests:
            lines.append(f"c={r.concurrency}: {r.short_requests} requests ended before "
                         f"max_tokens={r.max_tokens} (ban the end-of-turn ids to avoid this)")
    return "\n".join(lines)


async def _run_all(args: argparse.Namespace) -> list[LoadResult]:
    model = args.model or await detect_model(args.url, args.api_key)
    results = []
    for conc in args.concurrency:
        res = await run_load(
            args.url, model, conc,
            requests_per_client=args.requests_per_client, duration=args.duration,
            max_tokens=args.max_tokens, prompt=args.prompt, api_key=args.api_key,
            ban_tokens=args.ban_token_ids, stream=not args.no_stream,
            temperature=args.temperature, seed=args.seed, warmup=not args.no_warmup,
            timeout=args.timeout,
        )
        print(f"c={conc}: {res.tokens_per_s:.1f} tok/s, {len(res.requests)} requests, "
              f"{res.errors} errors", file=sys.stderr, flush=True)
        results.append(res)
    return results


def run_from_args(args: argparse.Namespace) -> int:
    """`chatd bench`: run each concurrency, print the table; 1 if any request failed."""
    try:
        results = run_client(_run_all(args))
    except (httpx.HTTPError, RuntimeError, OSError) as exc:
        print(f"chatd bench: cannot reach {normalise_base_url(args.url)}: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.json_path:
        doc = {"runs": [r.to_dict(include_requests=True) for r in results]}
        Path(args.json_path).write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if any(r.errors or r.warmup_error for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m chatd.bench.loadgen`, the same as `chatd bench`."""
    parser = argparse.ArgumentParser(prog="chatd bench", description="Closed-loop load generator "
                                     "for OpenAI-compatible chat servers.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
