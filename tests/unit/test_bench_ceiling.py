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
