"""Sampling arithmetic: OpenAI's penalty formula, logit_bias, seeds, nucleus cut."""

from __future__ import annotations

import numpy as np
import pytest

from chatd.engine.sampling import Sampler, _draw, _nucleus, log_softmax_at, top_ids
from chatd.engine.types import SamplingParams

V = 1000


def row(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, V).astype(np.float32)


def test_no_transform_returns_the_row_itself() -> None:
    r = row()
    assert Sampler(SamplingParams(), V, []).adjusted(r) is r


def test_presence_and_frequency_penalty_follow_openai_formula() -> None:
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    s = Sampler(params, V, [])
    for t in (7, 7, 7, 9):
        s.accept(t)
    r = row()
    out = s.adjusted(r)
    # mu[j] - c[j] * alpha_frequency - (c[j] > 0) * alpha_presence
    assert out[7] == pytest.approx(r[7] - 3 * 0.25 - 0.5)
    assert out[9] == pytest.approx(r[9] - 1 * 0.25 - 0.5)
    untouched = np.ones(V, dtype=bool)
    untouched[[7, 9]] = False
    assert np.array_equal(out[untouched], r[untouched])
    assert r[7] == row()[7], "the raw logits row must not be modified in place"


def test_negative_penalties_encourage_repeats() -> None:
    s = Sampler(SamplingParams(presence_penalty=-1.0), V, [])
    s.accept(3)
    assert s.adjusted(row())[3] == pytest.approx(row()[3] + 1.0)


def test_repetition_penalty_divides_positive_and_multiplies_negative() -> None:
    r = np.zeros(V, dtype=np.float32)
    r[1], r[2] = 4.0, -4.0
    s = Sampler(SamplingParams(repetition_penalty=2.0), V, [1, 2])
    out = s.adjusted(r)
    assert out[1] == pytest.approx(2.0)
    assert out[2] == pytest.approx(-8.0)


def test_logit_bias_adds_and_minus_100_bans() -> None:
    r = row()
    s = Sampler(SamplingParams(logit_bias={5: 2.5, int(np.argmax(r)): -100}), V, [])
    out = s.adjusted(r)
    assert out[5] == pytest.approx(r[5] + 2.5)
    assert out[int(np.argmax(r))] == -np.inf
    assert int(np.argmax(out)) != int(np.argmax(r))


def test_logit_bias_100_forces_the_token_even_when_sampling() -> None:
    params = SamplingParams(temperature=1.5, logit_bias={42: 100}, seed=1)
    s = Sampler(params, V, [], seed=1)
    assert all(s.sample(row(i)) == 42 for i in range(20))


def test_greedy_is_argmax() -> None:
    r = row(3)
    assert Sampler(SamplingParams(temperature=0), V, []).sample(r) == int(np.argmax(r))


def test_same_seed_same_tokens_different_seed_differs() -> None:
    params = SamplingParams(temperature=1.0)
    rows = [row(i) for i in range(30)]
    a = [Sampler(params, V, [], seed=7).sample(r) for r in rows]
    b = [Sampler(params, V, [], seed=7).sample(r) for r in rows]
    c = [Sampler(params, V, [], seed=8).sample(r) for r in rows]
    assert a == b
    assert a != c


def test_top_k_restricts_to_best_k() -> None:
    r = row(5)
    best = set(top_ids(r, 3).tolist())
    s = Sampler(SamplingParams(temperature=2.0, top_k=3), V, [], seed=0)
    assert {s.sample(r) for _ in range(200)} <= best


def test_nucleus_is_smallest_set_reaching_top_p() -> None:
    probs = np.array([0.05, 0.5, 0.3, 0.1, 0.05])
    cand, kept = _nucleus(None, probs, 0.75)
    assert cand.tolist() == [1, 2]
    assert kept.tolist() == [0.5, 0.3]
    cand, _ = _nucleus(None, probs, 0.8)
    assert cand.tolist() == [1, 2]
    cand, _ = _nucleus(None, probs, 0.81)
    assert cand.tolist() == [1, 2, 3]


def test_nucleus_grows_past_the_first_partition() -> None:
    probs = np.full(4096, 2.0**-12)  # exact in binary, so the cut is exact too
    cand, _ = _nucleus(None, probs, 0.5)
    assert len(cand) == 2048


def test_top_p_sampling_never_leaves_the_nucleus() -> None:
    r = row(9)
    probs = np.exp(r - r.max())
    probs /= probs.sum()
    nucleus, _ = _nucleus(None, probs, 0.5)
    s = Sampler(SamplingParams(top_p=0.5), V, [], seed=3)
    assert {s.sample(r) for _ in range(300)} <= set(nucleus.tolist())


def test_min_p_drops_unlikely_tokens() -> None:
    r = np.full(V, -10.0, dtype=np.float32)
    r[[1, 2]] = 5.0
    s = Sampler(SamplingParams(min_p=0.5), V, [], seed=0)
    assert {s.sample(r) for _ in range(100)} == {1, 2}


def test_log_softmax_matches_reference() -> None:
    r = row(11)
    ids = np.array([0, 5, 17])
    ref = r.astype(np.float64) - np.log(np.exp(r.astype(np.float64)).sum())
    assert np.allclose(log_softmax_at(r, ids), ref[ids])
    assert top_ids(r, 4).tolist() == np.argsort(r)[::-1][:4].tolist()


@pytest.mark.parametrize("greedy", [True, False])
def test_overflowed_row_still_yields_a_finite_token(greedy: bool) -> None:
    """repetition_penalty near 0 divides logits into +inf; NaNs must not escape."""
    params = SamplingParams(temperature=0.0 if greedy else 1.0, repetition_penalty=1e-38,
                            min_p=0.5, top_p=0.9)
    row = np.array([1.0, 30.0, 5.0, -2.0, 4.0], dtype=np.float32)
    sampler = Sampler(params, 5, prompt_tokens=[1, 2], seed=3)
    token = sampler.sample(row)
    assert 0 <= token < 5
    row[4] = np.nan
    assert 0 <= sampler.sample(row) < 5


@pytest.mark.parametrize("n", [10, 1000, 49152, 50000])
def test_blockwise_draw_is_the_inverse_cdf(n: int) -> None:
    rng = np.random.default_rng(n)
    w = rng.random(n).astype(np.float32)
    w[rng.random(n) < 0.3] = 0.0
    cdf = np.cumsum(w, dtype=np.float64)
    for u in [*rng.random(100), 0.0, 1.0 - 1e-12]:
        got = _draw(w, float(u))
        assert w[got] > 0
        ref = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), n - 1)
        assert got == ref or abs(cdf[got] - cdf[ref]) <= 1e-6 * cdf[-1]


def test_sampled_frequencies_match_softmax_of_biased_scaled_logits() -> None:
    """The draw follows softmax((logits + bias - penalties) / T), banned tokens never.

    4,096 tokens take the block-wise path of the compiled kernel (bias and penalties
    are applied in numpy first); the likely tokens sit in different blocks and the long
    tail carries ~15% of the mass, so both levels of the draw count.
    """
    n = 4096
    rng = np.random.default_rng(21)
    r = rng.normal(-4.0, 1.0, n).astype(np.float32)
    likely = [3, 700, 1500, 2047, 2048, 4095]
    r[likely] = [2.0, 1.5, 1.0, 0.5, 2.5, 1.8]
    banned = 2048  # the best token before bias
    params = SamplingParams(temperature=0.7, presence_penalty=0.5,
                            logit_bias={banned: -100, 700: 1.0})
    s = Sampler(params, n, [], seed=5)
    s.accept(3)  # one earlier occurrence: the presence penalty applies to token 3

    adj = r.astype(np.float64)
    adj[700] += 1.0
    adj[3] -= 0.5
    adj[banned] = -np.inf
    p = np.exp((adj - adj.max()) / 0.7)
    p /= p.sum()

    draws = 40_000
    counts = np.bincount([s.sample(r) for _ in range(draws)], minlength=n)
    assert counts[banned] == 0
    for t in [*likely[:4], likely[5]]:
        sd = np.sqrt(p[t] * (1 - p[t]) / draws)
        assert abs(counts[t] / draws - p[t]) < 5 * sd, t
    tail = np.ones(n, dtype=bool)
    tail[likely] = False
    p_tail = p[tail].sum()
    assert 0.05 < p_tail < 0.5
    sd = np.sqrt(p_tail * (1 - p_tail) / draws)
    assert abs(counts[tail].sum() / draws - p_tail) < 5 * sd


@pytest.mark.parametrize("exponential", [(np.exp, 1.0), (np.exp2, 1.4426950408889634)],
                         ids=["exp", "exp2"])
def test_truncated_draw_follows_the_renormalised_softmax(
        exponential: tuple[np.ufunc, float], monkeypatch: pytest.MonkeyPatch) -> None:
    """top_k's numpy path (not the kernel) keeps the softmax's proportions among the k
    best, with both exponentials `sampling._exponential` may pick by CPU."""
    from chatd.engine import sampling

    monkeypatch.setattr(sampling, "_EXP", exponential[0])
    monkeypatch.setattr(sampling, "_UNIT", exponential[1])
    n = 2000
    r = np.random.default_rng(4).normal(0.0, 1.0, n).astype(np.float32)
    r[[5, 900, 1999]] = [6.0, 5.6, 5.2]
    s = Sampler(SamplingParams(temperature=0.8, top_k=3), n, [], seed=9)
    p = np.exp(np.array([6.0, 5.6, 5.2]) / 0.8)
    p /= p.sum()
    draws = 20_000
    counts = np.bincount([s.sample(r) for _ in range(draws)], minlength=n)
    assert counts.sum() == counts[[5, 900, 1999]].sum()
    for c, q in zip(counts[[5, 900, 1999]], p, strict=True):
        assert abs(c / draws - q) < 5 * np.sqrt(q * (1 - q) / draws)
