"""Model load parameters: llama.cpp's AMX weight buffers are kept off where they crash."""

from __future__ import annotations

import pytest

from chatd.engine import llama


@pytest.mark.parametrize("amx", [True, False])
def test_extra_buffer_types_are_off_exactly_on_amx_cpus(monkeypatch: pytest.MonkeyPatch,
                                                        amx: bool) -> None:
    monkeypatch.setattr(llama, "cpu_has_amx", lambda: amx)
    assert llama.model_params().use_extra_bufts is (not amx)


def test_cpu_has_amx_reads_the_flags_line() -> None:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    assert llama.cpu_has_amx() is ("amx_int8" in flags)


def test_default_kv_cache_is_f16_and_deterministic_means_q8_0() -> None:
    from chatd.cli import build_parser, settings_from_args

    default = settings_from_args(build_parser().parse_args(["serve"]))
    assert default.kv_cache == "f16" and not default.deterministic
    invariant = settings_from_args(build_parser().parse_args(["serve", "--deterministic"]))
    assert invariant.kv_cache == "q8_0" and invariant.deterministic
    explicit = settings_from_args(build_parser().parse_args(["serve", "--kv-cache", "q8_0"]))
    assert explicit.deterministic
    with pytest.raises(SystemExit, match="--deterministic"):
        settings_from_args(build_parser().parse_args(
            ["serve", "--deterministic", "--kv-cache", "f16"]))
