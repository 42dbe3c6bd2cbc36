"""The chatd-vs-llama-server benchmark: each server as its users run it, plus the
same-sampling extra that runs llama-server the way chatd runs llama.cpp."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.probes import speculation
from benchmarks.versus import (
    SAME_SAMPLING,
    _format,
    _prompt,
    build_parser,
    check_targets,
    llama_server_command,
    llama_server_default_command,
    plan,
)
from chatd.config import Settings


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_llama_server_as_its_users_run_it() -> None:
    """Only the model, threads, slots and context; -c is the total the slots split."""
    cmd = llama_server_default_command(Path("/x/llama-server"), Path("/m.gguf"), "M", 8080,
                                       threads=2, ctx_per_sequence=4608, slots=16)
    assert cmd[0] == "/x/llama-server"
    assert _flag(cmd, "-m") == "/m.gguf" and _flag(cmd, "-t") == "2"
    assert _flag(cmd, "-c") == str(4608 * 16) and _flag(cmd, "-np") == "16"
    flags = {a for a in cmd[1:] if a.startswith("-")}
    assert flags == {"-m", "-t", "-c", "-np", "--host", "--port", "--alias"}


def test_same_sampling_llama_server_gets_chatds_engine_settings() -> None:
    cmd = llama_server_command(Path("/x/llama-server"), Path("/m.gguf"), "M", 8080,
                               threads=2, kv_cells=32768, parallel=16)
    assert cmd[0] == "/x/llama-server"
    assert _flag(cmd, "-m") == "/m.gguf" and _flag(cmd, "--alias") == "M"
    assert _flag(cmd, "-t") == _flag(cmd, "-tb") == "2"
    assert _flag(cmd, "-c") == "32768" and _flag(cmd, "-np") == "16"
    # chatd's default KV cache: one unified pool, f16 keys and values, flash attention.
    assert "--kv-unified" in cmd and _flag(cmd, "-fa") == "on"
    assert _flag(cmd, "-ctk") == _flag(cmd, "-ctv") == Settings.kv_cache == "f16"
    assert _flag(cmd, "-b") == _flag(cmd, "-ub") == str(Settings.batch_tokens)
    # Sampling as an OpenAI request asks (and chatd does): no truncation by default.
    assert _flag(cmd, "--top-k") == "0" and _flag(cmd, "--top-p") == "1.0"
    assert _flag(cmd, "--min-p") == "0.0"
    own = llama_server_command(Path("/x/llama-server"), Path("/m.gguf"), "M", 8080,
                               threads=2, kv_cells=32768, parallel=16, own_sampling=True)
    assert "--top-k" not in own and "--min-p" not in own
    # chatd with a KV stream per sequence (--kv-layout): so is llama-server.
    split = llama_server_command(Path("/x/llama-server"), Path("/m.gguf"), "M", 8080,
                                 threads=2, kv_cells=73728, parallel=16, unified=False)
    assert "--kv-unified" not in split and _flag(split, "-c") == "73728"


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["--llama-server", "/x", *argv])


def test_plan_rows_and_targets() -> None:
    rows = plan(_args())
    greedy = {r.concurrency: r for r in rows if r.label == "greedy"}
    assert sorted(greedy) == [1, 4, 8, 16] and greedy[1].temperature == 0.0
    assert {r.temperature for r in rows if r.label == "T=1"} == {1.0}
    assert greedy[1].targets == (("ratio", ">=", 1.0),)
    assert ("ttft_p90_ratio", "<=", 1.0) in greedy[16].targets
    ttft = [r for r in rows if r.fresh_prompt_tokens]
    assert [r.fresh_prompt_tokens for r in ttft] == [1000, 4000]
    assert all(r.concurrency == 1 and r.targets == (("ttft_p50_ratio", "<=", 1.0),)
               for r in ttft)
    repeat = next(r for r in rows if r.label.startswith("repeat"))
    assert repeat.temperature == 0.0 and repeat.targets == (("ratio", ">=", 1.5),)
    same = [(r.concurrency, r.stream) for r in rows if r.section == SAME_SAMPLING]
    assert same == [(1, True), (1, False), (16, True)]
    assert [r.label for r in plan(_args("--rows", "repeat"))] == [repeat.label]


def test_fresh_prompts_are_shared_by_the_servers_of_a_round_and_never_repeat() -> None:
    row = next(r for r in plan(_args("--rows", "ttft")) if r.fresh_prompt_tokens == 1000)
    first, second = _prompt(row, 0), _prompt(row, 1)
    assert callable(first) and callable(second)
    assert first(0, 0) == first(0, 0), "both servers get the same prompts in a round"
    seen = {first(0, 0), first(0, 1), second(0, 0), second(0, 1)}
    assert len(seen) == 4
    assert 800 < len(first(0, 0).split()) < 1000  # ~1.09 tokens a word


def test_targets_are_checked() -> None:
    row = {"ratio": 1.1, "ttft_p90_ratio": 1.2}
    got = check_targets(row, (("ratio", ">=", 1.05), ("ttft_p90_ratio", "<=", 1.0)))
    assert [t["met"] for t in got] == [True, False]
    assert check_targets({"ratio": None}, (("ratio", ">=", 1.0),))[0]["met"] is False


def test_table_shows_both_servers_the_ratios_and_targets() -> None:
    side = {"mean_tokens_per_s": 100.0, "ttft_p50_s": 0.015, "ttft_p90_s": 0.02,
            "itl_p50_s": 0.0095, "errors": 0}
    row = {"row": "greedy", "concurrency": 16, "stream": True, "chatd": side,
           "llama-server": {**side, "mean_tokens_per_s": 104.0, "ttft_p90_s": 0.025},
           "ratio": 0.962, "ttft_p50_ratio": 1.0, "ttft_p90_ratio": 0.8,
           "targets": check_targets({"ratio": 0.962}, (("ratio", ">=", 1.05),))}
    line = _format([row]).splitlines()[-1]
    assert line == ("| greedy | 16 | stream | 100.0 | 104.0 | 0.962 | 15 / 15: 1.0 "
                    "| 20 / 25: 0.8 | 10 / 10 | 0 / 0 | tok/s >= 1.05: NOT met |")


def test_table_shows_the_round_range_and_rounds_meeting_each_target() -> None:
    side = {"mean_tokens_per_s": 100.0, "ttft_p50_s": 0.015, "ttft_p90_s": 0.02,
            "itl_p50_s": 0.0095, "errors": 0}
    row = {"row": "greedy", "concurrency": 16, "stream": True, "chatd": side,
           "llama-server": side, "ratio": 1.04, "round_ratios": [0.97, 1.06, 1.09],
           "ttft_p50_ratio": 1.0, "ttft_p50_round_ratios": [0.9, 1.1],
           "ttft_p90_ratio": 0.95, "ttft_p90_round_ratios": [0.95],
           "targets": check_targets({"ratio": 1.04}, (("ratio", ">=", 1.05),))}
    line = _format([row]).splitlines()[-1]
    assert "| 1.04 (0.97-1.09) |" in line
    assert "| 15 / 15: 1.0 (0.90-1.10) |" in line
    assert "| 20 / 20: 0.95 |" in line  # one round: no range
    assert line.endswith("| tok/s >= 1.05: NOT met (by 2 of 3 rounds) |")


def test_speculation_from_health_counters() -> None:
    before = {"steps": 10, "tokens_generated": 10, "spec_drafted_tokens": 0,
              "spec_accepted_tokens": 0}
    after = {"steps": 110, "tokens_generated": 260, "spec_drafted_tokens": 200,
             "spec_accepted_tokens": 150}
    spec = speculation(before, after)
    assert spec["tokens_per_step"] == 2.5 and spec["accepted_per_step"] == 1.5
    assert spec["acceptance"] == 0.75
    assert speculation(before, before)["tokens_per_step"] is None
