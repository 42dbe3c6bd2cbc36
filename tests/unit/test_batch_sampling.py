"""Batched sampling (`sample_plain`) picks exactly the tokens per-row sampling picks."""

from __future__ import annotations

import numpy as np
import pytest

from chatd.engine.sampling import Sampler, sample_plain
from chatd.engine.types import SamplingParams

PLAIN_MIXES = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=1.6, top_p=1.0, top_k=0, min_p=0.0),
    SamplingParams(temperature=0.05),
    SamplingParams(frequency_penalty=0.5, presence_penalty=0.3),
    SamplingParams(logit_bias={3: 5.0, 4: -100.0, 7: 2.5}),
    SamplingParams(temperature=0.0, repetition_penalty=1.1),
    SamplingParams(temperature=0.8, repetition_penalty=1.3),
    SamplingParams(temperature=0.0, logit_bias={5: 100.0, 6: 100.0}),
    SamplingParams(temperature=1.2, logit_bias={5: 100.0, 9: 100.0}),
]
NOT_PLAIN = [
    SamplingParams(top_p=0.9),
    SamplingParams(top_k=40),
    SamplingParams(min_p=0.05),
    SamplingParams(temperature=0.0001, top_p=0.5),
]


def _rows(rng: np.random.Generator, b: int, v: int, spread: float) -> np.ndarray:
    return rng.standard_normal((b, v)).astype(np.float32) * np.float32(spread)


@pytest.mark.parametrize("vocab", [49152, 1000, 300])
def test_batched_matches_per_row_for_every_plain_mix(vocab: int) -> None:
    rng = np.random.default_rng(7)
    for step in range(30):
        mixes = [PLAIN_MIXES[(step + i) % len(PLAIN_MIXES)] for i in range(9)]
        seeds = [1000 * step + i for i in range(len(mixes))]
        rows = _rows(rng, len(mixes), vocab, spread=[0.5, 3.0, 12.0][step % 3])
        prompt = [1, 2, 3, 40, 41]
        banned = [0, 2] if step % 2 else []

        batched, alone = ([Sampler(p, vocab, prompt, seed=s, banned=banned)
                           for p, s in zip(mixes, seeds, strict=True)] for _ in range(2))
        assert all(s.plain for s in batched)
        for _ in range(4):  # generators and penalties stay aligned token after token
            got = sample_plain(batched, rows)
            want = [s.sample(rows[i].copy()) for i, s in enumerate(alone)]
            assert got == want
            for s, t in zip([*batched, *alone], got + got, strict=True):
                s.accept(t)
            rows = rows[::-1].copy()


def test_batched_handles_rows_that_are_not_finite() -> None:
    v = 2048
    rows = np.zeros((3, v), dtype=np.float32)
    rows[0, 5] = np.inf
    rows[1, :] = -np.inf
    rows[1, 9] = 1.0
    rows[2, 11] = np.nan
    rows[2, 12] = 4.0
    for params in (SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)):
        batched = [Sampler(params, v, [], seed=i) for i in range(3)]
        alone = [Sampler(params, v, [], seed=i) for i in range(3)]
        want = [s.sample(rows[i].copy()) for i, s in enumerate(alone)]
        assert sample_plain(batched, rows) == want
        assert [s.rng.random() for s in batched] == [s.rng.random() for s in alone]


def test_only_whole_distribution_samplers_are_plain() -> None:
    assert all(Sampler(p, 1000, []).plain for p in PLAIN_MIXES)
    assert not any(Sampler(p, 1000, [1, 2]).plain for p in NOT_PLAIN)


def test_sampling_leaves_the_logits_rows_as_llama_cpp_wrote_them() -> None:
    """Bias, penalties and bans are written into the raw rows and undone: logprobs, a
    sibling's first token and speculation's later rows read them afterwards."""
    rng = np.random.default_rng(5)
    v = 4096
    rows = _rows(rng, 6, v, 3.0)
    rows[0, 100] = np.nan
    before = rows.copy()
    mixes = [SamplingParams(temperature=0.0, frequency_penalty=0.5, logit_bias={1: -100.0}),
             SamplingParams(temperature=0.9, presence_penalty=1.0, logit_bias={7: 3.0}),
             SamplingParams(temperature=0.0, repetition_penalty=1.2),
             SamplingParams(temperature=1.0, repetition_penalty=1.2, logit_bias={9: -100.0}),
             SamplingParams(temperature=1.0),
             SamplingParams(temperature=0.0)]
    samplers = [Sampler(p, v, [1, 2, 3, 7, 7], seed=i, banned=[0])
                for i, p in enumerate(mixes)]
    for s in samplers:
        s.accept(7)
    sample_plain(samplers, rows)
    np.testing.assert_array_equal(rows, before)
    for i, s in enumerate(samplers):
        s.sample(rows[i])
    np.testing.assert_array_equal(rows, before)
