"""End-to-end fixtures: one real `chatd serve` subprocess per session, plus helpers.

The main server is started once for the whole e2e session; the API-key server only
when a test asks for it. Every helper here talks to the server over real HTTP.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

STARTUP_TIMEOUT_S = 120.0
# Extra `chatd serve` arguments for both servers, e.g. CHATD_E2E_SERVER_ARGS="--threads 1"
# on a machine whose cores are shared with other busy processes (llama.cpp's worker
# threads slow down badly when they cannot all run at once).
EXTRA_SERVER_ARGS = os.environ.get("CHATD_E2E_SERVER_ARGS", "").split()
AUTH_KEY = "test-key-123"
# Weight copies the servers write (`--dense-prefill`, `--weights q8_0`) go to one
# directory for the session, never the user's cache; the first server writes, the rest reuse.
WEIGHTS_CACHE = Path(tempfile.mkdtemp(prefix="chatd-e2e-weights-"))
atexit.register(shutil.rmtree, WEIGHTS_CACHE, True)
ERROR_KEYS = {"message", "type", "param", "code"}


# --------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:  # pragma: no cover - only on a broken temp dir
        return f"<could not read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


class ServerProcess:
    """A running `chatd serve` subprocess and where its output goes."""

    def __init__(self, extra_args: list[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        fd, name = tempfile.mkstemp(prefix=f"chatd-e2e-{self.port}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self._log = self.log_path.open("wb")
        # Stored completions go to a file of this server's own, never the user's home.
        self.store_path = self.log_path.with_suffix(".sqlite3")
        store = [] if "--store" in extra_args else ["--store", str(self.store_path)]
        # The suite asserts that a seed reproduces text under load, which is what
        # batch-invariant mode guarantees; test_default_mode.py runs the default cache.
        mode = [] if "--kv-cache" in extra_args else ["--deterministic"]
        cache = ([] if "--weights-cache" in extra_args
                 else ["--weights-cache", str(WEIGHTS_CACHE)])
        cmd = [sys.executable, "-m", "chatd", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), *store, *mode, *cache, *extra_args,
               *EXTRA_SERVER_ARGS]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def log_tail(self, lines: int = 60) -> str:
        self._log.flush()
        return _tail(self.log_path, lines)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no attempt yet"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                pytest.fail(f"chatd serve exited with code {rc} during start-up "
                            f"({' '.join(self.cmd)}); log tail:\n{self.log_tail()}",
                            pytrace=False)
            try:
                r = httpx.get(self.url + "/health", timeout=2.0)
                if r.status_code == 200:
                    return
                last_error = f"/health -> {r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last_error = repr(exc)
            time.sleep(0.25)
        self.stop()
        pytest.fail(f"chatd serve not healthy after {timeout:.0f}s (last: {last_error}); "
                    f"log tail:\n{self.log_tail()}", pytrace=False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


# A server that failed to start is not retried for every test that needs it (a server
# that never becomes healthy would otherwise cost STARTUP_TIMEOUT_S per test).
_start_failures: dict[tuple[str, ...], str] = {}


@contextlib.contextmanager
def running_server(extra_args: list[str]) -> Iterator[ServerProcess]:
    key = tuple(extra_args)
    if key in _start_failures:
        pytest.fail(f"(not retried) {_start_failures[key]}", pytrace=False)
    server = ServerProcess(extra_args)
    try:
        try:
            server.wait_ready()
        except pytest.fail.Exception as exc:
            _start_failures[key] = str(exc)
            raise
        yield server
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            server.log_path.unlink()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                Path(f"{server.store_path}{suffix}").unlink()


def start_up_error(extra_args: list[str], timeout: float = 60.0) -> str:
    """Start a server that must refuse to start; the tail of what it logged, checked
    to be one line for a person, not a traceback."""
    server = ServerProcess(extra_args)
    try:
        assert server.proc.wait(timeout=timeout) != 0
        tail = server.log_tail(20)
        assert "Traceback" not in tail
        return tail
    finally:
        server.stop()


@contextlib.contextmanager
def openai_client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    """The official client on one of a module's own servers, without retries: a test
    sees the first answer."""
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                      timeout=120.0)
    try:
        yield c
    finally:
        c.close()


def concurrent_stops_limits_and_schemas(url: str, model_id: str, *, streams: int,
                                        structured: int) -> None:
    """Run `streams` seeded T=1 streams with a stop string and a token limit beside
    `structured` strict json_schema requests, all at once, and check that each kept
    its stop, its limit and its schema."""
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}

    async def run() -> None:
        c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                               timeout=120.0)
        try:
            async def limited(i: int) -> None:
                stream = await c.chat.completions.create(
                    model=model_id, max_tokens=24, temperature=1.0, seed=i, stream=True,
                    messages=[{"role": "user", "content": f"Count from {i} upwards."}],
                    stop=["\n\n"], logit_bias={"2": -100, "0": -100})
                text, finish = "", None
                async for chunk in stream:
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                        finish = chunk.choices[0].finish_reason or finish
                assert "\n\n" not in text
                assert finish in ("length", "stop")

            async def one_structured(i: int) -> None:
                r = await c.chat.completions.create(
                    model=model_id, max_tokens=80, seed=i,
                    messages=[{"role": "user", "content": "Describe a person as JSON."}],
                    response_format={"type": "json_schema", "json_schema": {
                        "name": "person", "schema": schema, "strict": True}})
                assert r.choices[0].finish_reason == "stop"
                jsonschema.validate(json.loads(r.choices[0].message.content), schema)

            await asyncio.gather(*(limited(i) for i in range(streams)),
                                 *(one_structured(i) for i in range(structured)))
        finally:
            await c.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def chatd_server() -> Iterator[ServerProcess]:
    """The main server: defaults (bundled model, 8 sequences, context 8192)."""
    with running_server([]) as server:
        yield server


@pytest.fixture(scope="session")
def server_url(chatd_server: ServerProcess) -> str:
    return chatd_server.url


@pytest.fixture(scope="session")
def auth_server_url() -> Iterator[str]:
    """A second server that requires `Authorization: Bearer test-key-123`.

    Session-scoped, so it is started only when an auth test first asks for it.
    """
    with running_server(["--api-key", AUTH_KEY, "--ctx-size", "2048"]) as server:
        yield server.url


@pytest.fixture(autouse=True)
def _log_tail_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """On a failed e2e test, print the tail of the main server's log."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "chatd_server" in request.fixturenames:
        server: ServerProcess = request.getfixturevalue("chatd_server")
        print(f"\n----- chatd server log tail ({server.log_path}) -----\n{server.log_tail(40)}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


class KeyedServer:
    """A chatd with two API keys on one store file, which outlives restarts of the
    process (the stored-completions and Responses modules each run one)."""

    def __init__(self, store: Path, keys: tuple[str, str], *extra: str) -> None:
        self.store = store
        self.keys = keys
        self.args = ["--api-key", keys[0], "--api-key", keys[1], "--store", str(store),
                     *extra]
        self.process: ServerProcess | None = None

    def start(self, *more: str) -> None:
        """Start (again) on the same store; `more` adds flags for this run only."""
        self.process = ServerProcess([*self.args, *more])
        self.process.wait_ready()

    @property
    def url(self) -> str:
        assert self.process is not None
        return self.process.url

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process.log_path.unlink(missing_ok=True)
            self.process = None

    def kill_9(self) -> None:
        assert self.process is not None
        self.process.proc.send_signal(signal.SIGKILL)
        assert self.process.proc.wait(timeout=10) == -signal.SIGKILL
        self.stop()  # closes the log

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.keys[0],
                             max_retries=0, timeout=120.0)

    def aclient(self, key: str | None = None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key or self.keys[0],
                                  max_retries=0, timeout=120.0)

    def http(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120.0,
                            headers={"Authorization": f"Bearer {key or self.keys[0]}"})


@contextlib.contextmanager
def keyed_server(store: Path, keys: tuple[str, str], *extra: str) -> Iterator[KeyedServer]:
    server = KeyedServer(store, keys, *extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- clients


@pytest.fixture(scope="session")
def http(server_url: str) -> Iterator[httpx.Client]:
    """Raw HTTP client for exact status codes, headers and bodies."""
    with httpx.Client(base_url=server_url, timeout=120.0) as client:
        yield client


@pytest.fixture(scope="session")
def client(server_url: str) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0,
                      timeout=120.0)
    yield c
    c.close()


@pytest.fixture
async def aclient(server_url: str):
    c = openai.AsyncOpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0,
                           timeout=120.0)
    yield c
    await c.close()


@pytest.fixture(scope="session")
def model_id(http: httpx.Client) -> str:
    r = http.get("/v1/models")
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data, "GET /v1/models listed no model"
    return data[0]["id"]


@pytest.fixture
def chat_body(model_id: str):
    """Build a raw request body: chat_body("Hi", max_tokens=8) -> dict."""

    def build(prompt: str = "Say hello.", **kw: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model_id,
                                "messages": [{"role": "user", "content": prompt}],
                                "max_tokens": 16}
        body.update(kw)
        return body

    return build


# --------------------------------------------------------------------------- helpers


def collect_stream(stream: Any) -> list[Any]:
    """Drain an openai SDK stream (sync) into a list of chunks."""
    return list(stream)


async def acollect_stream(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


def stream_texts(chunks: list[Any]) -> dict[int, str]:
    """Joined delta.content per choice index (SDK chunk objects)."""
    out: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            out.setdefault(choice.index, "")
            if choice.delta.content:
                out[choice.index] += choice.delta.content
    return out


def raw_stream_texts(chunks: list[dict[str, Any]]) -> dict[int, str]:
    """Joined delta.content per choice index (raw JSON chunks)."""
    out: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            out.setdefault(choice["index"], "")
            out[choice["index"]] += choice["delta"].get("content") or ""
    return out


def parse_sse_body(body: str) -> list[dict[str, Any]]:
    """Check exact data-only SSE framing and return the JSON chunks (without [DONE]).

    The body must be a sequence of `data: <json>\\n\\n` events (comment events starting
    with ':' are tolerated: the spec allows them as keep-alives) ending with
    `data: [DONE]\\n\\n`, with nothing after it.
    """
    assert body.endswith("data: [DONE]\n\n"), f"stream does not end with [DONE]: {body[-200:]!r}"
    events = body.split("\n\n")
    assert events[-1] == "", "trailing bytes after the last event"
    events = events[:-1]
    assert events[-1] == "data: [DONE]"
    chunks = []
    for event in events[:-1]:
        if event.startswith(":"):
            continue
        assert event.startswith("data: "), f"event is not a data-only SSE frame: {event!r}"
        assert "\n" not in event, f"event spans several lines: {event!r}"
        payload = event[len("data: "):]
        assert payload != "[DONE]", "[DONE] sent more than once"
        chunks.append(json.loads(payload))
    return chunks


def check_stream_chunks(chunks: list[dict[str, Any]], *, n: int = 1,
                        include_usage: bool = False) -> dict[int, str]:
    """Assert the chunk-sequence rules of the spec on raw JSON chunks; return finish reasons."""
    assert chunks, "stream had no chunks"
    first = chunks[0]
    for key in ("id", "created", "model", "system_fingerprint"):
        values = {json.dumps(c.get(key)) for c in chunks}
        assert len(values) == 1, f"{key} differs between chunks: {values}"
    assert first["id"].startswith("chatcmpl-")
    assert isinstance(first["created"], int) and not isinstance(first["created"], bool)
    assert isinstance(first["system_fingerprint"], str) and first["system_fingerprint"]
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert isinstance(c["choices"], list)

    body_chunks = chunks
    if include_usage:
        last = chunks[-1]
        assert last["choices"] == [], f"usage chunk must have choices == []: {last}"
        usage = last.get("usage")
        assert isinstance(usage, dict), f"last chunk carries no usage: {last}"
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["prompt_tokens"] > 0
        body_chunks = chunks[:-1]
        for c in body_chunks:
            assert "usage" in c and c["usage"] is None, \
                f"with include_usage every earlier chunk must carry usage: null: {c}"
    else:
        for c in chunks:
            assert c.get("usage") is None, f"usage sent without include_usage: {c}"

    seen_first: set[int] = set()
    finished: dict[int, str] = {}
    for c in body_chunks:
        assert c["choices"], f"chunk with no choices before the end: {c}"
        for choice in c["choices"]:
            idx = choice["index"]
            assert 0 <= idx < n, f"unexpected choice index {idx}"
            assert "delta" in choice and "finish_reason" in choice, choice
            assert idx not in finished, f"chunk for choice {idx} after its finish chunk: {c}"
            if idx not in seen_first:
                seen_first.add(idx)
                assert choice["delta"].get("role") == "assistant", \
                    f"first chunk of choice {idx} has no role 'assistant': {choice}"
            if choice["finish_reason"] is not None:
                assert choice["finish_reason"] in {"stop", "length"}, choice
                non_empty = {k: v for k, v in choice["delta"].items() if v is not None}
                assert non_empty == {}, f"finish chunk must have an empty delta: {choice}"
                finished[idx] = choice["finish_reason"]
    assert sorted(finished) == list(range(n)), \
        f"expected exactly one finish chunk for each of {n} choices, got {finished}"
    return finished


def sse_request(http: httpx.Client, body: dict[str, Any],
                headers: dict[str, str] | None = None) -> tuple[httpx.Response, str]:
    """POST a streaming request and return (response, full body text)."""
    with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        text = r.read().decode("utf-8")
    return r, text


def assert_error(resp: httpx.Response, status: int, *, code: str | None = None,
                 param: str | None = None, message_contains: str | None = None) -> dict:
    """Assert an OpenAI error envelope with all four keys; return the inner error."""
    assert resp.status_code == status, \
        f"expected HTTP {status}, got {resp.status_code}: {resp.text[:500]}"
    assert resp.headers.get("content-type", "").startswith("application/json"), \
        f"error body is not JSON: {resp.headers.get('content-type')}"
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    missing = ERROR_KEYS - set(err)
    assert not missing, f"error object lacks {missing}: {err}"
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    assert err["code"] is None or isinstance(err["code"], str), err
    if code is not None:
        assert err["code"] == code, f"expected code {code!r}: {err}"
    if param is not None:
        assert err["param"] == param, f"expected param {param!r}: {err}"
    if message_contains is not None:
        assert message_contains in err["message"], err
    return err


def assert_server_ok(http: httpx.Client, model_id: str) -> None:
    """The server still answers normally: /health and a tiny completion."""
    r = http.get("/health")
    assert r.status_code == 200, r.text
    r = http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"
