"""The chatd-vs-llama-server benchmark runs llama-server the way chatd runs llama.cpp."""

from __future__ import annotations

from pathlib import Path

from benchmarks.versus import _format, llama_server_command
from chatd.config import Settings


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_llama_server_gets_chatds_engine_settings() -> None:
    cmd = llama_server_command(Path("/x/llama-server"), Path("/m.gguf"), "M", 8080,
                               threads=2, kv_cells=32768, parallel=16)
    assert cmd[0] == "/x/llama-server"
    assert _flag(cmd, "-m") == "/m.gguf" and _flag(cmd, "--alias") == "M"
    assert _flag(cmd, "-t") == _flag(cmd, "-tb") == "2"
    assert _flag(cmd, "-c") == "32768" and _flag(cmd, "-np") == "16"
    # chatd's KV cache: one unified pool, q8_0 keys and values, flash attention.
    assert "--kv-unified" in cmd and _flag(cmd, "-fa") == "on"
    assert _flag(cmd, "-ctk") == _flag(cmd, "-ctv") == Settings.kv_cache == "q8_0"
    assert _flag(cmd, "-b") == _flag(cmd, "-ub") == str(Settings.batch_tokens)
    # Sampling as an OpenAI request asks (and chatd does): no truncation by default.
    assert _flag(cmd, "--top-k") == "0" and _flag(cmd, "--top-p") == "1.0"
    assert _flag(cmd, "--min-p") == "0.0"
    own = llama_server_command(Path("/x/llama-server"), Path("/m.gguf"), "M", 8080,
                               threads=2, kv_cells=32768, parallel=16, own_sampling=True)
    assert "--top-k" not in own and "--min-p" not in own


def test_table_shows_both_servers_and_the_ratio() -> None:
    side = {"mean_tokens_per_s": 100.0, "ttft_p90_s": 0.02, "itl_p50_s": 0.0095, "errors": 0}
    row = {"concurrency": 1, "stream": True, "chatd": side,
           "llama-server": {**side, "mean_tokens_per_s": 104.0}, "ratio": 0.962}
    line = _format([row]).splitlines()[-1]
    assert line == "| 1 | stream | 100.0 | 104.0 | 0.962 | 20 / 20 | 10 / 10 | 0 / 0 |"
