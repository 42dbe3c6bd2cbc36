"""The benchmark's ceiling: ratios are taken against the faster of two measurements."""

from __future__ import annotations

from benchmarks.ceiling import CeilingResult, DecodeFigure


def _ceiling(rates: dict[int, float], pp: float) -> CeilingResult:
    decode = [DecodeFigure(batch=b, steps=128, tokens_per_s=r, per_seq_tokens_per_s=r / b,
                           step_ms=1000 * b / r, steady_tokens_per_s=r) for b, r in rates.items()]
    return CeilingResult(model="m", n_threads=2, n_ctx=1024, n_batch=512, kv_unified=True,
                         prompt_tokens=64, decode=decode, prompt_processing_tokens=512,
                         prompt_processing_tokens_per_s=pp, prompt_processing_reps=[pp],
                         seconds=10.0)


def test_higher_of_takes_the_faster_figure_per_batch_size() -> None:
    before = _ceiling({1: 100.0, 8: 220.0}, pp=290.0)
    after = _ceiling({1: 150.0, 8: 200.0}, pp=280.0)
    both = before.higher_of(after)
    assert both.decode_at(1) == 150.0 and both.decode_at(8) == 220.0
    assert both.best_decode.batch == 8
    assert both.prompt_processing_tokens_per_s == 290.0
    assert before.decode_at(1) == 100.0, "the inputs are left as they were"


def test_draft_speedup_bound_is_the_best_rows_per_ms_against_one_row() -> None:
    result = _ceiling({1: 100.0}, pp=290.0)
    assert result.draft_speedup_bound() is None
    result.draft_rows_ms = {1: 9.0, 2: 16.8, 4: 23.2, 8: 41.5, 13: 65.0}
    rows, bound = result.draft_speedup_bound()
    assert rows == 13 and bound == round(13 * 9.0 / 65.0, 2)
