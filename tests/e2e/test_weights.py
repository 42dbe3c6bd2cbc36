"""`--weights q8_0`: the bundled Q4_1 file served re-encoded as Q8_0, on a real server.

The re-encoding is llama.cpp's own quantizer, run once into a cache directory; what
matters to a client is that everything keeps working on the re-encoded weights and that
a later start reuses the file instead of writing it again."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from chatd.models.registry import load_model_info
from chatd.models.requantize import Q8_0_FILE_TYPE
from tests.e2e.conftest import (
    EXTRA_SERVER_ARGS,
    ServerProcess,
    concurrent_stops_limits_and_schemas,
    openai_client,
    running_server,
    start_up_error,
)

pytestmark = pytest.mark.timeout(300)

ARGS = ["--max-sequences", "4", "--ctx-size", "2048"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights-cache")


@pytest.fixture(scope="module")
def q8_server(cache_dir: Path) -> Iterator[ServerProcess]:
    with running_server([*ARGS, "--weights", "q8_0", "--weights-cache", str(cache_dir)]) as s:
        yield s


@pytest.fixture(scope="module")
def q8(q8_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai_client(q8_server) as c:
        yield c


def test_health_says_which_weights_are_served(q8_server: ServerProcess,
                                              server_url: str) -> None:
    assert httpx.get(q8_server.url + "/health").json()["weights"] == \
        "Q8_0 (re-encoded from Q4_1)"
    assert httpx.get(server_url + "/health").json()["weights"] == "Q4_1"


def test_the_cache_holds_one_complete_q8_0_file(q8_server: ServerProcess,
                                                cache_dir: Path) -> None:
    files = sorted(p.name for p in cache_dir.iterdir())
    assert len(files) == 1 and files[0].endswith(".q8_0.gguf"), files  # no .partial left
    info = load_model_info(cache_dir / files[0])
    assert info.metadata["general.file_type"] == Q8_0_FILE_TYPE
    assert info.chat_template  # the template and tokenizer travel with the weights


def test_fingerprint_differs_from_the_stored_weights(q8: openai.OpenAI, model_id: str,
                                                     client: openai.OpenAI) -> None:
    ask = {"model": model_id, "max_tokens": 1,
           "messages": [{"role": "user", "content": "Hi"}]}
    assert q8.chat.completions.create(**ask).system_fingerprint != \
        client.chat.completions.create(**ask).system_fingerprint


def test_limits_stops_and_schemas_hold_on_reencoded_weights(q8_server: ServerProcess,
                                                             model_id: str) -> None:
    concurrent_stops_limits_and_schemas(q8_server.url, model_id, streams=6, structured=2)


def test_a_seed_gives_the_same_text_and_the_limit_holds(q8: openai.OpenAI,
                                                        model_id: str) -> None:
    ask = {"model": model_id, "max_tokens": 20, "temperature": 1.0, "seed": 11,
           "logit_bias": {"2": -100}, "messages": [{"role": "user", "content": "Tell a joke."}]}
    first, second = (q8.chat.completions.create(**ask) for _ in range(2))
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].finish_reason == "length"
    assert first.usage.completion_tokens == 20


def test_a_later_start_reuses_the_cached_file(q8_server: ServerProcess,
                                              cache_dir: Path) -> None:
    (cached,) = cache_dir.iterdir()
    written = cached.stat().st_mtime_ns
    with running_server([*ARGS, "--weights", "q8_0", "--weights-cache", str(cache_dir),
                         "--log-level", "info"]) as again:
        assert httpx.get(again.url + "/health").json()["weights"].startswith("Q8_0")
        assert "re-encoding" not in again.log_tail(200)
    assert [p for p in cache_dir.iterdir()] == [cached]
    assert cached.stat().st_mtime_ns == written


def test_an_unusable_cache_directory_is_a_one_line_start_up_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    tail = start_up_error([*ARGS, "--weights", "q8_0", "--weights-cache",
                           str(blocker / "cache")])
    assert "--weights q8_0 cannot create its cache directory" in tail


def test_the_terminal_chat_serves_the_same_copy_in_process(q8: openai.OpenAI, model_id: str,
                                                           cache_dir: Path,
                                                           tmp_path: Path) -> None:
    (cached,) = cache_dir.iterdir()
    written = cached.stat().st_mtime_ns
    expected = q8.chat.completions.create(
        model=model_id, temperature=0, max_tokens=24,
        messages=[{"role": "user", "content": "Name three colors."}]).choices[0].message.content
    env = {k: v for k, v in os.environ.items() if k not in ("CHATD_API_KEY", "OPENAI_API_KEY")}
    at = EXTRA_SERVER_ARGS.index("--threads") if "--threads" in EXTRA_SERVER_ARGS else None
    threads = EXTRA_SERVER_ARGS[at:at + 2] if at is not None else []  # as the server runs
    result = subprocess.run(
        [sys.executable, "-m", "chatd", "chat", "--deterministic", "--ctx-size", "2048", *threads,
         "--weights", "q8_0", "--weights-cache", str(cache_dir), "--temperature", "0",
         "--max-tokens", "24"],
        input="Name three colors.", capture_output=True, text=True, timeout=120,
        env={**env, "CHATD_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected.strip()
    assert cached.stat().st_mtime_ns == written
