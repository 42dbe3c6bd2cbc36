"""The compiled sampling kernel (`chatd.engine._draw`): the inverse CDF of the softmax,
zero weights never drawn, every vocabulary length, and bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
from chatd.engine._draw import draw, logsumexp


def _softmax64(row: np.ndarray, scale: float) -> np.ndarray:
    x = row.astype(np.float64) * np.float32(scale)
    w = np.exp(x - x.max())
    return w / w.sum()


@pytest.mark.parametrize("n", [1, 7, 255, 256, 257, 1000, 4096, 49152, 300_001])
def test_draw_is_the_inverse_cdf_of_the_softmax(n: int) -> None:
    """Against a float64 reference: the same index wherever u is not within rounding of
    a boundary. 300,001 entries need more block totals than fit on the C stack."""
    rng = np.random.default_rng(n)
    row = (rng.standard_normal(n) * 3).astype(np.float32)
    row[rng.random(n) < 0.2] = -np.inf
    if not np.isfinite(row).any():
        row[0] = 0.0
    cdf = np.cumsum(_softmax64(row, 0.7))
    for u in [*rng.random(200), 0.0, 1.0 - 1e-16]:
        got = draw(row, 0.7, float(u))
        assert 0 <= got < n and np.isfinite(row[got])
        ref = min(int(np.searchsorted(cdf, u, side="right")), n - 1)
        assert got == ref or abs(cdf[got] - cdf[ref]) <= 1e-5, (u, got, ref)


def test_frequencies_match_the_softmax() -> None:
    """Chi-square over 60,000 draws on a 12-token slice of a 49,152-token row."""
    n = 49152
    rng = np.random.default_rng(3)
    row = np.full(n, -30.0, dtype=np.float32)
    likely = rng.choice(n, 12, replace=False)
    row[likely] = rng.normal(0.0, 1.0, 12).astype(np.float32)
    p = _softmax64(row, 1.3)[likely]
    p /= p.sum()
    draws = 60_000
    picked = np.array([draw(row, 1.3, float(u)) for u in rng.random(draws)])
    assert np.isin(picked, likely).all()
    counts = np.array([(picked == t).sum() for t in likely])
    chi2 = float((((counts - draws * p) ** 2) / (draws * p)).sum())
    assert chi2 < 31.3  # 11 degrees of freedom, p = 0.001


def test_scale_is_applied_as_a_float32_multiply() -> None:
    """draw(row, s, u) == draw(float32(row * s), 1, u): the two ways sampling calls it
    (raw row, or a row already scaled and transformed) pick the same token."""
    rng = np.random.default_rng(11)
    row = (rng.standard_normal(49152) * 4).astype(np.float32)
    for scale in (1 / 0.7, 1 / 1.3, 20.0, 1.0):
        scaled = row * np.float32(scale)
        for u in rng.random(50):
            assert draw(row, scale, float(u)) == draw(scaled, 1.0, float(u))


def test_never_draws_a_banned_or_negligible_token() -> None:
    row = np.full(1000, -np.inf, dtype=np.float32)
    row[[10, 500]] = [0.0, -200.0]  # e^-200 is below float32: weight 0
    for u in (0.0, 0.5, 0.999999, 1.0 - 1e-16):
        assert draw(row, 1.0, u) == 10


@pytest.mark.parametrize("bad", ["nan", "inf", "all -inf"])
def test_rows_without_a_usable_total_return_minus_one(bad: str) -> None:
    row = np.zeros(600, dtype=np.float32)
    if bad == "nan":
        row[300] = np.nan
    elif bad == "inf":
        row[300] = np.inf
    else:
        row[:] = -np.inf
    assert draw(row, 1.0, 0.5) == -1


@pytest.mark.parametrize("args", [
    (np.zeros(10, dtype=np.float64), 1.0, 0.5),
    (np.zeros((2, 10), dtype=np.float32), 1.0, 0.5),
    (np.zeros(20, dtype=np.float32)[::2], 1.0, 0.5),
    (np.zeros(0, dtype=np.float32), 1.0, 0.5),
    (np.zeros(10, dtype=np.float32), 0.0, 0.5),
    (np.zeros(10, dtype=np.float32), 1.0, 1.0),
    (np.zeros(10, dtype=np.float32), 1.0, -0.1),
])
def test_bad_arguments_raise(args: tuple) -> None:
    with pytest.raises((ValueError, TypeError, BufferError)):
        draw(*args)


def test_reads_llama_cpp_rows_in_place() -> None:
    """Logits rows are numpy views of ctypes float arrays (buffer format '<f')."""
    import ctypes

    block = (ctypes.c_float * 512)()
    row = np.ctypeslib.as_array(block)
    row[77] = 50.0
    assert memoryview(row).format in ("<f", "f")
    assert draw(row, 1.0, 0.5) == 77
    with pytest.raises(ValueError):
        draw(row.astype(">f4"), 1.0, 0.5)


@pytest.mark.parametrize("n", [1, 7, 300, 49152])
def test_logsumexp_matches_float64(n: int) -> None:
    row = (np.random.default_rng(n).standard_normal(n) * 5).astype(np.float32)
    x = row.astype(np.float64)
    assert logsumexp(row) == pytest.approx(x.max() + np.log(np.exp(x - x.max()).sum()),
                                           abs=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_logsumexp_is_nan_for_rows_it_cannot_sum(bad: float) -> None:
    row = np.zeros(600, dtype=np.float32)
    row[3] = bad
    assert np.isnan(logsumexp(row))
    assert np.isnan(logsumexp(np.full(10, -np.inf, dtype=np.float32)))
