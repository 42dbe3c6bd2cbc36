"""When `--dense-prefill auto` turns the dense prompt path on (engine/prompts.py)."""

from __future__ import annotations

import llama_cpp as lc
import pytest

from chatd.engine import prompts

Q4_1 = lc.LLAMA_FTYPE_MOSTLY_Q4_1


@pytest.fixture(autouse=True)
def plenty_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompts, "available_memory", lambda: 16 << 30)


def test_on_for_q4_1_and_q5_1_files_on_a_cpu() -> None:
    assert prompts.auto_reason(Q4_1, 400 << 20, gpu=False, deterministic=False) is None
    assert prompts.auto_reason(lc.LLAMA_FTYPE_MOSTLY_Q5_1, 400 << 20, gpu=False,
                               deterministic=False) is None


@pytest.mark.parametrize("file_type", [lc.LLAMA_FTYPE_MOSTLY_Q8_0, lc.LLAMA_FTYPE_MOSTLY_Q4_0,
                                       lc.LLAMA_FTYPE_MOSTLY_F16, lc.LLAMA_FTYPE_MOSTLY_Q4_K_M])
def test_off_where_llama_cpp_already_batches_the_weights(file_type: int) -> None:
    reason = prompts.auto_reason(file_type, 400 << 20, gpu=False, deterministic=False)
    assert reason is not None and "batched kernel" in reason


def test_off_for_q4_1_weights_that_llama_cpp_holds_interleaved() -> None:
    """chatd's llama.cpp patch gives Q4_1 the interleaved kernels (patches/)."""
    reason = prompts.auto_reason(Q4_1, 400 << 20, gpu=False, deterministic=False,
                                 interleaved=True)
    assert reason is not None and "batched kernel" in reason


def test_off_under_deterministic_and_on_gpu_builds() -> None:
    assert prompts.auto_reason(Q4_1, 1, gpu=False, deterministic=True) == "--deterministic"
    assert "GPU" in prompts.auto_reason(Q4_1, 1, gpu=True, deterministic=False)


def test_off_when_the_copy_would_take_over_a_quarter_of_free_memory() -> None:
    assert prompts.auto_reason(Q4_1, 4 << 30, gpu=False, deterministic=False) is None
    reason = prompts.auto_reason(Q4_1, (4 << 30) + 1, gpu=False, deterministic=False)
    assert reason is not None and "quarter of free memory" in reason


def test_bf16_where_the_cpu_multiplies_it_else_f16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompts, "cpu_flags", lambda: {"avx2", "f16c", "avx512_bf16"})
    assert prompts.dense_file_type() == lc.LLAMA_FTYPE_MOSTLY_BF16
    monkeypatch.setattr(prompts, "cpu_flags", lambda: {"avx2", "f16c"})
    assert prompts.dense_file_type() == lc.LLAMA_FTYPE_MOSTLY_F16
