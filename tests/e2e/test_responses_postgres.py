"""Stored Responses on PostgreSQL, shared by two replicas started together on one fresh
database: a conversation begun on one continues on the other, and a background
response running on one is stopped by a cancel sent to the other. Skipped where
PostgreSQL is not installed (see tests/conftest.py).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from .conftest import ServerProcess

pytestmark = pytest.mark.timeout(300)

KEY = "sk-resp-pg-0123456789"
MODEL = "SmolLM2-135M-Instruct"
LONG = {"type": "json_schema", "name": "numbers", "schema": {
    "type": "object", "properties": {"n": {"type": "array", "items": {"type": "integer"},
                                           "minItems": 400}},
    "required": ["n"], "additionalProperties": False}}


def _client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0,
                         timeout=120.0)


def _running(server: ServerProcess) -> int:
    return int(httpx.get(server.url + "/health", timeout=10).json()["running_sequences"])


def test_replicas_share_responses(postgres: Any) -> None:
    url = postgres.new_database()
    args = ["--store", url, "--api-key", KEY, "--ctx-size", "2048"]
    first, second = ServerProcess(args), ServerProcess(args)  # migrate concurrently
    try:
        first.wait_ready()
        second.wait_ready()
        with _client(first) as one, _client(second) as two:
            r1 = one.responses.create(model=MODEL, input="My name is Ada.",
                                      max_output_tokens=16)
            r2 = two.responses.create(model=MODEL, input="What is my name?",
                                      previous_response_id=r1.id, max_output_tokens=16)
            assert r2.usage is not None and r1.usage is not None
            assert r2.usage.input_tokens > r1.usage.input_tokens
            assert one.responses.retrieve(r2.id).output_text == r2.output_text
            assert [i.id for i in one.responses.input_items.list(r1.id)] == \
                [i.id for i in two.responses.input_items.list(r1.id)]

            bg = one.responses.create(model=MODEL, input="List numbers.", background=True,
                                      max_output_tokens=1500, text={"format": LONG})
            deadline = time.monotonic() + 60
            while two.responses.retrieve(bg.id).status != "in_progress":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert _running(first) == 1
            assert two.responses.cancel(bg.id).status == "cancelled"
            deadline = time.monotonic() + 10  # it polls the store every second
            while _running(first):
                assert time.monotonic() < deadline, "the generation went on on replica one"
                time.sleep(0.1)
            assert one.responses.retrieve(bg.id).status == "cancelled"
            two.responses.delete(r1.id)
            with pytest.raises(openai.NotFoundError):
                one.responses.retrieve(r1.id)
    finally:
        for server in (first, second):
            server.stop()
            server.log_path.unlink(missing_ok=True)
