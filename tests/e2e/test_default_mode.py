"""The default (fast) KV cache: f16 keys and values, not batch-invariant.

The rest of the suite runs `--deterministic` servers, because it asserts that a seed
reproduces text under load. These tests run a server in the default mode and check
what holds there too: the mode is reported, long prompts (llama.cpp's tiled attention
kernel) and concurrent streams work, stops, limits and schemas are honoured.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from chatd.engine.llama import cpu_has_amx
from chatd.engine.prompts import cpu_flags
from tests.e2e.conftest import (
    ServerProcess,
    concurrent_stops_limits_and_schemas,
    openai_client,
    running_server,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fast_server() -> Iterator[ServerProcess]:
    with running_server(["--kv-cache", "f16", "--max-sequences", "8"]) as server:
        yield server


@pytest.fixture(scope="module")
def fast(fast_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai_client(fast_server) as c:
        yield c


def test_health_reports_the_mode(fast_server: ServerProcess, server_url: str) -> None:
    fast_health = httpx.get(fast_server.url + "/health").json()
    assert fast_health["kv_cache"] == "f16" and fast_health["deterministic"] is False
    main_health = httpx.get(server_url + "/health").json()
    assert main_health["kv_cache"] == "q8_0" and main_health["deterministic"] is True
    # --deterministic keeps llama.cpp's plain kernels, the ones its invariance is
    # checked on; the default interleaves the weights where llama.cpp can.
    assert "interleaved" not in main_health["weights"]
    if "avx2" in cpu_flags() and not cpu_has_amx():  # test_interleaved_weights.py
        # ... and then `auto` takes no dense copy: the file beats it at decoding
        assert fast_health["weights"] == "Q4_1 (interleaved for llama.cpp's batched kernels)"


def test_modes_have_different_fingerprints(fast: openai.OpenAI,
                                           client: openai.OpenAI, model_id: str) -> None:
    """Outputs may differ between the modes, so system_fingerprint must too."""
    kw = {"model": model_id, "messages": [{"role": "user", "content": "Hi"}],
          "max_tokens": 2}
    fast_fp = fast.chat.completions.create(**kw).system_fingerprint
    main_fp = client.chat.completions.create(**kw).system_fingerprint
    assert fast_fp and main_fp and fast_fp != main_fp


def test_long_prompt_is_answered_and_its_prefix_reused(fast: openai.OpenAI,
                                                       model_id: str) -> None:
    words = " ".join(f"item{i} is {'red' if i % 3 else 'blue'}." for i in range(300))
    messages = [{"role": "user", "content": f"{words}\n\nWhich colour is item7?"}]
    first = fast.chat.completions.create(model=model_id, messages=messages, max_tokens=8,
                                         temperature=0)
    assert first.usage.prompt_tokens > 1000
    assert first.choices[0].message.content
    again = fast.chat.completions.create(model=model_id, messages=messages, max_tokens=8,
                                         temperature=0)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 1


def test_concurrent_streams_keep_stops_limits_and_schemas(fast_server: ServerProcess,
                                                          model_id: str) -> None:
    concurrent_stops_limits_and_schemas(fast_server.url, model_id, streams=6, structured=2)
