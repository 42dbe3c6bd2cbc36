"""Q4_1 weights through llama.cpp's interleaved kernels (chatd's patch, patches/).

The patch lets llama.cpp hold a Q4_1 file's weights the way it holds Q4_0 ones, eight
rows interleaved, and run them through the Q4_0 kernels plus each block's offset:
d*q + m = d*(q - 8) + (m + 8*d). These tests load the bundled model in-process, as the
server does, and check that it is held that way where the kernels exist (`make
install-test` builds llama-cpp-python with the patch), and that the kernels compute the
file's own math: teacher-forced over a text, every position's distribution is as close
to an exact F32 evaluation of the same weights as llama.cpp's plain Q4_1 kernels are.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import llama_cpp as lc
import numpy as np
import pytest

from benchmarks.dense_decode import all_logits, compare, log_softmax
from benchmarks.workloads import REPEAT_TEXT
from chatd.engine.llama import LlamaModel, LlamaSettings, cpu_has_amx
from chatd.engine.prompts import cpu_flags
from chatd.models.registry import bundled_model_path, load_model_info
from chatd.models.requantize import dense_copy

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif("avx2" not in cpu_flags() or cpu_has_amx(),
                       reason="llama.cpp interleaves weights on AVX2 CPUs, and chatd keeps "
                              "extra buffer types off on AMX ones"),
]

SETTINGS = LlamaSettings(kv_cells=1024, n_seq_max=1, n_threads=2)


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    model = LlamaModel(bundled_model_path(), replace(SETTINGS, interleave=False))
    try:
        return model.tokenize(REPEAT_TEXT)[:300]
    finally:
        model.close()


def logits(path: Path, tokens: list[int], interleave: bool) -> tuple[bool, np.ndarray]:
    model = LlamaModel(path, replace(SETTINGS, interleave=interleave))
    try:
        return model.interleaved, all_logits(model, tokens)
    finally:
        model.close()


@pytest.fixture(scope="module")
def exact(tokens: list[int]) -> Iterator[np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="chatd-exact-") as tmp:
        path = dense_copy(load_model_info(None, None), lc.LLAMA_FTYPE_ALL_F32,
                          cache_dir=Path(tmp), threads=2)
        yield logits(path, tokens, interleave=False)[1]


def test_the_bundled_q4_1_weights_are_interleaved_unless_asked_not_to(
        tokens: list[int]) -> None:
    on, _ = logits(bundled_model_path(), tokens[:8], interleave=True)
    off, _ = logits(bundled_model_path(), tokens[:8], interleave=False)
    assert on, ("the bundled Q4_1 model was not interleaved: llama-cpp-python was built "
                "without chatd's patch (make install-test builds it)")
    assert not off


def test_the_interleaved_kernels_are_as_close_to_the_exact_model_as_the_plain_ones(
        tokens: list[int], exact: np.ndarray) -> None:
    _, interleaved = logits(bundled_model_path(), tokens, interleave=True)
    _, plain = logits(bundled_model_path(), tokens, interleave=False)
    to_interleaved, to_plain = compare(exact, interleaved), compare(exact, plain)
    # Measured over 367 positions: 0.0026 and 0.0025 nats, top token 96% and 96%.
    assert to_interleaved["kl_mean"] <= 1.5 * to_plain["kl_mean"] + 1e-4, \
        (to_interleaved, to_plain)
    assert to_interleaved["top_agree"] >= to_plain["top_agree"] - 0.03
    between = compare(plain, interleaved)
    assert between["kl_mean"] < 0.01 and between["top_agree"] >= 0.9, between


def test_one_row_at_a_time_matches_the_batch_up_to_rounding(tokens: list[int]) -> None:
    """Teacher-forced in one batch (the four-row GEMM kernel, llama.cpp's tiled
    attention) against one row at a time (the one-row kernel): the same distributions."""
    model = LlamaModel(bundled_model_path(), SETTINGS)
    try:
        batch = all_logits(model, tokens[:120])
        model.clear()
        rows = []
        for i, t in enumerate(tokens[:120]):
            model.decode([t], [i], [0], [True])
            rows.append(model.logits_rows([0]).astype(np.float64))
    finally:
        model.close()
    row = compare(batch, log_softmax(np.concatenate(rows)))
    assert row["kl_mean"] < 0.01 and row["top_agree"] >= 0.9, row
