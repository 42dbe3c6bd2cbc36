"""Model load parameters: llama.cpp's AMX weight buffers are kept off where they crash,
and interleaved weights in --deterministic."""

from __future__ import annotations

import pytest

from chatd.engine import llama


@pytest.mark.parametrize("amx", [True, False])
def test_extra_buffer_types_are_off_exactly_on_amx_cpus(monkeypatch: pytest.MonkeyPatch,
                                                        amx: bool) -> None:
    monkeypatch.setattr(llama, "cpu_has_amx", lambda: amx)
    assert llama.model_params().use_extra_bufts is (not amx)


def test_interleaved_weights_are_off_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """--deterministic loads the weights with interleave=False (server.build_runtime)."""
    monkeypatch.setattr(llama, "cpu_has_amx", lambda: False)
    assert llama.model_params(interleave=False).use_extra_bufts is False


def test_the_log_names_the_buffers_that_hold_the_weights() -> None:
    llama._buffers_seen.clear()
    for piece in (b"load_tensors:   CPU_REPACK model buffer size = ", b"   60.75 MiB\n",
                  b"load_tensors:   CPU_Mapped model buffer size =    28.69 MiB\n"):
        llama.log_callback(2, piece, None)
    assert llama._buffers_seen == ["CPU_REPACK", "CPU_Mapped"]


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


def test_kv_layout_auto_takes_streams_only_when_every_sequence_gets_a_full_context() -> None:
    from chatd.cli import build_parser, settings_from_args
    from chatd.server import ConfigError, kv_streams

    def streams(*args: str, ctx: int = 4608, cells: int = 73728,
                slots: int = 32) -> tuple[int, int] | None:
        return kv_streams(settings_from_args(build_parser().parse_args(["serve", *args])),
                          ctx, cells, slots)

    # llama-server's -c 73728 -np 16: sixteen streams of 4,608 cells.
    assert streams("--max-sequences", "16") == (16, 4608)
    assert streams("--max-sequences", "16", ctx=8192, cells=32768) is None  # the default
    assert streams("--max-sequences", "4", ctx=1000, cells=8192) == (8, 1024)  # rounded up
    assert streams("--max-sequences", "4", ctx=1024, cells=1 << 20, slots=8) == (8, 1024)
    assert streams("--max-sequences", "16", "--deterministic") is None
    assert streams("--max-sequences", "16", "--kv-layout", "unified") is None
    with pytest.raises(ConfigError, match="at least --max-sequences x that, 81920"):
        streams("--max-sequences", "16", "--kv-layout", "split", ctx=5000)
    with pytest.raises(ConfigError, match="--deterministic"):
        streams("--deterministic", "--kv-layout", "split")


def test_gpus_per_replica_is_for_replicas_only(capsys: pytest.CaptureFixture[str]) -> None:
    from chatd.cli import build_parser, main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--gpus-per-replica", "1"])
    assert exit_.value.code == 2
    assert "--replicas" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--replicas", "2", "--gpus-per-replica", "-1"])
    assert build_parser().parse_args(["serve", "--replicas", "2"]).gpus_per_replica == 0.0
