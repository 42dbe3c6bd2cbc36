"""SIGTERM: stop accepting, let in-flight requests finish, end the rest cleanly, exit 0."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import NO_EOS, Server, chat_body

pytestmark = pytest.mark.timeout(180)

URL = "/v1/chat/completions"


def _stream_in_thread(server: Server, body: dict) -> tuple[threading.Thread, threading.Event,
                                                           dict]:
    started = threading.Event()
    out: dict = {"lines": []}

    def run() -> None:
        try:
            with httpx.stream("POST", server.url + URL, json=body, timeout=120) as r:
                out["status"] = r.status_code
                for line in r.iter_lines():
                    out["lines"].append(line)
                    started.set()
        except httpx.HTTPError as exc:  # a torn stream would land here
            out["error"] = repr(exc)
        started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(60)
    return thread, started, out


def _chunks(lines: list[str]) -> list[dict]:
    data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]", f"stream did not end with [DONE]: {lines[-3:]}"
    return [json.loads(d) for d in data[:-1]]


def test_stream_cut_by_the_deadline_ends_properly(tmp_path: Path) -> None:
    server = Server(["--ctx-size", "2048", "--max-sequences", "2", "--shutdown-grace", "1"],
                    tmp_path / "log")
    server.wait_ready()
    thread, _, out = _stream_in_thread(
        server, chat_body("Write a very long story.", max_tokens=1900, stream=True,
                          logit_bias=NO_EOS))
    signalled = time.monotonic()
    server.terminate()
    time.sleep(0.5)
    with pytest.raises(httpx.TransportError):  # no longer accepting
        httpx.get(server.url + "/health", timeout=2)
    assert server.stop() == 0
    assert time.monotonic() - signalled < 15
    thread.join(30)
    assert "error" not in out and out["status"] == 200
    chunks = _chunks(out["lines"])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length" and finishes.count("length") == 1
    assert "ending the remaining requests" in server.log_text()


def test_in_flight_requests_finish_within_the_grace_period(tmp_path: Path) -> None:
    server = Server(["--ctx-size", "256", "--max-sequences", "2", "--shutdown-grace", "60"],
                    tmp_path / "log")
    server.wait_ready()
    thread, _, out = _stream_in_thread(
        server, chat_body("Count to twenty.", max_tokens=40, stream=True, logit_bias=NO_EOS))
    server.terminate()
    assert server.stop() == 0
    thread.join(30)
    chunks = _chunks(out["lines"])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c["choices"])
    assert text  # the whole answer arrived: 40 tokens, finished as asked
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert "ending the remaining requests" not in server.log_text()
