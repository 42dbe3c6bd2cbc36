"""The bounded admission queue: 503 with Retry-After, and SDK retries that succeed.

The ops server runs one sequence at a time, queues at most one request, and lets it
wait at most one second.
"""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from .conftest import FILE_KEYS, MODEL, NO_EOS, Server, assert_envelope, auth, chat_body

pytestmark = pytest.mark.timeout(180)

URL = "/v1/chat/completions"
# The slot holder's answer: ~1.2-1.5 s at one sequence's ~190-230 tok/s, well past the
# queue's half-second wait, and within a key's 400 tokens a minute beside earlier requests.
HOLD_TOKENS = 280


def _hold_slot(server: Server, key: str, max_tokens: int) -> tuple[threading.Thread,
                                                                    threading.Event, list]:
    """Stream a long completion in a thread; the event is set once it has started."""
    started = threading.Event()
    result: list = []

    def run() -> None:
        body = chat_body("Write a poem.", max_tokens=max_tokens, stream=True,
                         logit_bias=NO_EOS)
        with httpx.stream("POST", server.url + URL, json=body, headers=auth(key),
                          timeout=120) as r:
            for _ in r.iter_lines():
                started.set()
            result.append(r.status_code)
        started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(60), "the slot-holding stream never started"
    return thread, started, result


def test_queue_full_and_queue_timeout(ops_server: Server) -> None:
    holder, _, _ = _hold_slot(ops_server, FILE_KEYS[2], HOLD_TOKENS)
    queued: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: queued.append(httpx.post(
        ops_server.url + URL, json=chat_body(), headers=auth(FILE_KEYS[3]), timeout=60)))
    waiter.start()
    deadline = time.monotonic() + 30  # until it holds the one queue place
    while "chatd_queue_depth 1.0" not in httpx.get(
            ops_server.url + "/metrics", headers=auth(FILE_KEYS[-1])).text:
        assert time.monotonic() < deadline, "the second request never queued"
        time.sleep(0.05)
    r = httpx.post(ops_server.url + URL, json=chat_body(), headers=auth(FILE_KEYS[3]))
    assert_envelope(r, 503, code="server_overloaded")
    assert int(r.headers["retry-after"]) >= 1
    waiter.join(30)
    # the queued one waited its half second, then was refused the same way
    assert_envelope(queued[0], 503, code="server_overloaded")
    assert "waited" in queued[0].json()["error"]["message"]
    holder.join(120)


def test_sdk_retries_until_admitted(ops_server: Server) -> None:
    holder, _, _ = _hold_slot(ops_server, FILE_KEYS[3], HOLD_TOKENS)
    client = openai.OpenAI(base_url=ops_server.url + "/v1", api_key=FILE_KEYS[4],
                           max_retries=6, timeout=60)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert raw.parse().choices[0].message.role == "assistant"
    assert raw.retries_taken >= 1  # refused with 503 + Retry-After at least once
    holder.join(120)
    health = httpx.get(ops_server.url + "/health").json()
    assert health["running_sequences"] == 0 and health["kv_cells_running"] == 0
