"""Prompt-lookup drafts and their verification: same tokens, same distribution."""

from __future__ import annotations

import numpy as np

from chatd.engine.sampling import Sampler
from chatd.engine.speculate import (
    AFTER_MISS_DRAFT,
    EXPLORE_AFTER,
    MAX_DRAFT,
    NgramDrafter,
    StepCost,
    any_length_pays,
    best_length,
    expected_tokens,
    verify,
)
from chatd.engine.types import SamplingParams

V = 12  # a small vocabulary slice, so every probability is measurable


def test_drafts_what_followed_the_latest_match() -> None:
    tokens = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3, 7, 8, 1, 2, 3]
    drafter = NgramDrafter(tokens)
    # "1 2 3" last occurred before "7 8": the guess is what followed it there.
    assert drafter.draft(3) == [7, 8, 1]
    assert drafter.draft(1) == [7]


def test_no_match_no_draft_and_the_index_follows_the_list() -> None:
    tokens = [1, 2, 3, 4]
    drafter = NgramDrafter(tokens)
    assert drafter.draft(4) == []
    tokens += [5, 3, 4]  # the engine appends to the same list
    assert drafter.draft(2) == [5, 3]


def test_take_rate_follows_feedback_and_misses_rest() -> None:
    drafter = NgramDrafter([1, 2, 1, 2, 1, 2])
    assert drafter.draft(3) == [1, 2]  # what followed the last "1 2 1 2"
    start = drafter.rate
    drafter.feedback(3, 3)
    assert drafter.rate > start
    drafter.feedback(3, 0)  # a wholly rejected draft: rest a few steps
    assert drafter.draft(3) == []


def test_after_a_miss_the_next_draft_is_short_until_one_is_wholly_taken() -> None:
    tokens = list(range(40)) + list(range(3))  # "0 1 2" again: 37 tokens follow it
    drafter = NgramDrafter(tokens)
    assert len(drafter.draft(40)) == MAX_DRAFT
    drafter.feedback(MAX_DRAFT, 5)  # the text departed from its source at guess 6
    assert len(drafter.draft(40)) == AFTER_MISS_DRAFT
    drafter.feedback(AFTER_MISS_DRAFT, AFTER_MISS_DRAFT)  # back on track
    assert len(drafter.draft(40)) == MAX_DRAFT


def test_step_cost_learns_the_line() -> None:
    cost = StepCost()
    assert cost.line() is None
    for rows in [1, 2, 1, 4, 3, 1, 5, 2] * 5:
        cost.observe(rows, 0.002 + 0.005 * rows)
    a, b = cost.line() or (0.0, 0.0)
    assert abs(a - 0.002) < 1e-6 and abs(b - 0.005) < 1e-6


def test_a_line_resting_on_old_steps_asks_for_new_ones() -> None:
    """A line fitted once (say on a noisy start) and never refitted, because no draft
    made a step of another size since, turns stale, so the engine re-measures."""
    cost = StepCost()
    for rows in [1, 2, 1, 2, 1]:
        cost.observe(rows, 0.01 * rows)
    assert cost.line() is not None and not cost.stale()
    for _ in range(EXPLORE_AFTER + 300):  # only one-row steps from now on
        cost.observe(1, 0.01)
        cost.line()
    assert cost.stale()
    cost.observe(4, 0.02)
    cost.line()
    assert not cost.stale()


def test_draft_length_pays_for_its_rows() -> None:
    assert expected_tokens(0.5, 0) == 1.0
    assert abs(expected_tokens(0.5, 2) - 1.75) < 1e-12
    # Rows nearly as dear as steps (compute-bound): only a very likely guess pays.
    dear = (0.001, 0.006)
    assert best_length(0.5, 8, 1, 0, dear) == 0
    assert 1 <= best_length(0.95, 8, 1, 0, dear) <= 4
    # Cheap rows (bandwidth-bound): long drafts pay.
    cheap = (0.007, 0.0002)
    assert best_length(0.9, 8, 1, 0, cheap) == 8
    # No cost line yet: one likely guess, to learn what a second row costs.
    assert best_length(0.6, 8, 1, 0, None) == 1
    assert best_length(0.3, 8, 1, 0, None) == 0


def test_any_length_pays_is_best_length_of_a_sure_guess() -> None:
    """The engine's per-step check answers exactly what the full search would."""
    rng = np.random.default_rng(7)
    lines: list[tuple[float, float] | None] = [None, (0.001, 0.006), (0.007, 0.0002),
                                               (0.005, 0.0053), (0.0, 1e-6), (0.01, 0.0)]
    lines += [(float(a), float(b)) for a, b in rng.uniform(0.0, 0.01, (300, 2))]
    for line in lines:
        for limit in (0, 1, 2, 7, 32):
            for rows in (1, 2, 4, 16):
                for others in (0, rows - 1):
                    assert any_length_pays(limit, rows, others, line) == (
                        best_length(1.0, limit, rows, others, line) > 0), (line, limit, rows)


def _rows(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1.2, V).astype(np.float32) for _ in range(count)]


def _speculative(sampler: Sampler, rows: list[np.ndarray], draft: list[int]) -> list[int]:
    out: list[int] = []

    def emit(i: int) -> int:
        token = sampler.sample(rows[i])
        sampler.accept(token)
        out.append(token)
        return token

    verify(draft, emit)
    return out


def _sequential(sampler: Sampler, rows: list[np.ndarray], draft: list[int]) -> list[int]:
    """Without speculation: one row per step, as long as the context is the drafted one."""
    out: list[int] = []
    for i, r in enumerate(rows):
        token = sampler.sample(r)
        sampler.accept(token)
        out.append(token)
        if i == len(draft) or token != draft[i]:
            break
    return out


def test_seeded_tokens_are_those_of_sequential_sampling() -> None:
    rows = _rows(1, 4)
    for params in (SamplingParams(temperature=0.0), SamplingParams(temperature=1.0),
                   SamplingParams(temperature=0.8, top_p=0.9, presence_penalty=0.4)):
        for seed in range(200):
            draft = [int(np.argmax(r)) for r in rows[:3]]
            a = _speculative(Sampler(params, V, [], seed=seed), rows, draft)
            b = _sequential(Sampler(params, V, [], seed=seed), rows, draft)
            assert a == b, (params, seed)


def _softmax(r: np.ndarray) -> np.ndarray:
    p = np.exp(r.astype(np.float64) - r.max())
    return p / p.sum()


def test_emitted_tokens_follow_the_model_distribution() -> None:
    """Chi-square: the first emitted token follows row 0, and given that it was the
    guess, the second follows row 1, whatever was guessed."""
    rows = _rows(2, 3)
    p0, p1 = _softmax(rows[0]), _softmax(rows[1])
    draft = [int(np.argsort(p0)[-2]), 5]  # the second likeliest: often rejected
    draws = 30_000
    firsts = np.zeros(V)
    seconds = np.zeros(V)
    sampler = Sampler(SamplingParams(temperature=1.0), V, [], seed=11)
    for _ in range(draws):
        out = _speculative(sampler, rows, draft)
        firsts[out[0]] += 1
        if out[0] == draft[0]:
            seconds[out[1]] += 1
    for counts, p in ((firsts, p0), (seconds, p1)):
        n = counts.sum()
        chi2 = float((((counts - n * p) ** 2) / (n * p)).sum())
        assert chi2 < 33.0, chi2  # 11 degrees of freedom: p < 0.0005 to exceed
