"""A client that goes away (mid-stream, or while waiting for a non-streaming answer)
must not wedge the server or leave its generation running."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.timeout(90)

_COUNTER_KEYS = ("running_sequences", "running", "active_sequences", "num_running")


def _running_counter(health: Any) -> int | None:
    """A running-sequence counter in /health's JSON, if the server exposes one."""
    if not isinstance(health, dict):
        return None
    for key in _COUNTER_KEYS:
        if isinstance(health.get(key), int):
            return health[key]
    for value in health.values():
        found = _running_counter(value)
        if found is not None:
            return found
    return None


def _health(http: httpx.Client) -> tuple[int, Any]:
    r = http.get("/health", timeout=5)
    try:
        return r.status_code, r.json()
    except json.JSONDecodeError:
        return r.status_code, None


def _wait_idle(http: httpx.Client, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    count = None
    while time.monotonic() < deadline:
        _, body = _health(http)
        count = _running_counter(body)
        if not count:
            return count
        time.sleep(0.1)
    return count


def _open_and_drop(server_url: str, model_id: str) -> None:
    body = {"model": model_id, "stream": True, "max_tokens": 2000, "temperature": 1.0,
            "logit_bias": {"2": -100, "0": -100},  # never ends on its own
            "messages": [{"role": "user", "content": "Write a very long story."}]}
    with httpx.Client(base_url=server_url, timeout=60) as c, \
            c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        data_events = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                data_events += 1
                if data_events >= 2:
                    break
        assert data_events == 2
    # leaving both context managers closes the response and the connection


def test_disconnect_mid_stream(server_url: str, http: httpx.Client, model_id: str) -> None:
    status, before = _health(http)
    assert status == 200
    counter_before = _running_counter(before)
    if counter_before:  # something else still running: wait for a quiet start
        _wait_idle(http, 30)

    _open_and_drop(server_url, model_id)
    status, _ = _health(http)
    assert status == 200
    r = http.post("/v1/chat/completions", timeout=30, json={
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]

    if counter_before is not None:
        remaining = _wait_idle(http, 3.0)
        assert remaining == 0, (
            f"/health still reports {remaining} running sequence(s) 3 s after the client "
            "disconnected: the abandoned sequence keeps generating")


def test_repeated_disconnects(server_url: str, http: httpx.Client, model_id: str) -> None:
    for _ in range(5):
        _open_and_drop(server_url, model_id)
    r = http.post("/v1/chat/completions", timeout=30, json={
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
    assert r.status_code == 200, r.text
    _, body = _health(http)
    if _running_counter(body) is not None:
        assert _wait_idle(http, 3.0) == 0


def _tokens_generated(http: httpx.Client) -> int:
    _, body = _health(http)
    return int(body["tokens_generated"])


def test_non_streaming_client_timeout_cancels_its_generation(
        http: httpx.Client, client: openai.OpenAI, model_id: str) -> None:
    """The official client gives up after its timeout (then retries): the abandoned
    generation must stop, not run to max_tokens beside the retry."""
    _wait_idle(http, 30)
    impatient = client.with_options(timeout=1.5, max_retries=0)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(
            model=model_id, max_tokens=2000, temperature=1.0,
            logit_bias={"2": -100, "0": -100},  # never ends on its own
            messages=[{"role": "user", "content": "Write a very long story."}])
    assert _wait_idle(http, 3.0) == 0, "the abandoned request is still generating"
    settled = _tokens_generated(http)
    time.sleep(0.5)
    assert _tokens_generated(http) == settled
    assert_ok = http.post("/v1/chat/completions", timeout=30, json={
        "model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
    assert assert_ok.status_code == 200, assert_ok.text
