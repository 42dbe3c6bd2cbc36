"""Stored completions on PostgreSQL, as several replicas share them: two `chatd serve`
processes started together on one fresh database (both migrate it at once), each
seeing what the other stored, and a completion acknowledged by a replica killed
with SIGKILL right after its answer still there; and the fuzzer on the endpoints,
against PostgreSQL this time. Skipped where PostgreSQL is not
installed (see tests/conftest.py).
"""

from __future__ import annotations

import signal
import uuid
from typing import Any

import openai
import pytest

from .conftest import ServerProcess
from .test_store import fuzz_stored_endpoints

pytestmark = pytest.mark.timeout(300)

KEY = "sk-store-pg-0123456789"
MODEL = "SmolLM2-135M-Instruct"


def _client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0,
                         timeout=120.0)


def test_replicas_share_one_postgresql_store(postgres: Any) -> None:
    url = postgres.new_database()
    args = ["--store", url, "--api-key", KEY, "--ctx-size", "1024"]
    first, second = ServerProcess(args), ServerProcess(args)  # migrate concurrently
    tag = {"test": uuid.uuid4().hex}
    try:
        first.wait_ready()
        second.wait_ready()
        with _client(first) as one, _client(second) as two:
            plain = one.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                store=True, metadata={**tag, "kind": "plain"})
            streamed = {c.id for c in two.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4,
                store=True, stream=True, metadata={**tag, "kind": "stream"})}.pop()
            for client in (one, two):
                listed = client.chat.completions.list(metadata=tag)
                assert [c.id for c in listed] == [plain.id, streamed]
                assert not listed.has_more
            assert two.chat.completions.retrieve(plain.id).choices == plain.choices
            assert two.chat.completions.update(plain.id, metadata={"x": "y"}).metadata == \
                {"x": "y"}
            assert one.chat.completions.retrieve(plain.id).metadata == {"x": "y"}
            messages = one.chat.completions.messages.list(streamed)
            assert [(m.id, m.content) for m in messages.data] == [(f"{streamed}-0", "Hello")]
            assert one.chat.completions.delete(streamed).deleted
            with pytest.raises(openai.NotFoundError):
                two.chat.completions.retrieve(streamed)

            last = one.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Bye"}], max_tokens=4,
                store=True, metadata=tag)
            first.proc.send_signal(signal.SIGKILL)  # right after the answer
            first.proc.wait(timeout=10)
            assert two.chat.completions.retrieve(last.id).choices == last.choices
        fuzz_stored_endpoints(second.url, KEY, [plain.id, last.id])
    finally:
        for server in (first, second):
            server.stop()
            server.log_path.unlink(missing_ok=True)
