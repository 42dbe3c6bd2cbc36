"""The native loop of a lone sequence (`chatd.engine._solo`): its picks are the Python
sampler's to the token, and a run decodes, stops and hands over its tokens as the
engine expects. llama.cpp is stood in for by two ctypes callbacks here (the end-to-end
suite runs the real one); everything else is the compiled code itself."""

from __future__ import annotations

import ctypes
import select
import threading
from collections.abc import Callable

import llama_cpp as lc
import numpy as np
import pytest
from chatd.engine._solo import Runner, batch_size, pick

from chatd.engine.sampling import Sampler
from chatd.engine.types import SamplingParams

N_VOCAB = 1000
NO_IDS = np.empty(0, dtype=np.int32)
NO_VALS = np.empty(0, dtype=np.float32)
DECODE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, lc.llama_batch)
LOGITS = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)


def _rows() -> list[np.ndarray]:
    """Ordinary rows and the awkward ones: ties, NaN, +inf, -inf, nothing finite."""
    rng = np.random.default_rng(5)
    rows = [(rng.standard_normal(N_VOCAB) * 3).astype(np.float32) for _ in range(6)]
    tie = np.zeros(N_VOCAB, dtype=np.float32)
    tie[[17, 400, 900]] = 2.0
    nan = rows[0].copy()
    nan[[3, 50]] = np.nan
    inf = rows[1].copy()
    inf[[9, 600]] = np.inf
    banned = np.full(N_VOCAB, -np.inf, dtype=np.float32)
    banned[123] = -5.0
    dead = np.full(N_VOCAB, -np.inf, dtype=np.float32)
    return [*rows, tie, nan, inf, banned, dead]


SETTINGS = [
    {"temperature": 0.0},
    {"temperature": 0.0, "logit_bias": {17: 5.0, 400: -100.0, 3: -2.5}},
    {"temperature": 1.0},
    {"temperature": 0.6, "logit_bias": {17: 3.0, 900: -100.0}},
    {"temperature": 1.7, "top_p": 1.0, "min_p": 0.0},
]


def _sampler(settings: dict, seed: int, banned: tuple[int, ...] = ()) -> Sampler:
    return Sampler(SamplingParams(max_new_tokens=64, **settings), N_VOCAB, [1, 2, 3],
                   seed=seed, banned=banned)


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("banned", [(), (5, 17)])
def test_pick_is_the_samplers_pick(settings: dict, banned: tuple[int, ...]) -> None:
    for i, row in enumerate(_rows()):
        sampler = _sampler(settings, seed=100 + i, banned=banned)
        edits = sampler.fixed_edits()
        assert edits is not None
        ids, values = edits
        expected = sampler.sample(row.copy())
        u = np.random.Generator(np.random.PCG64(100 + i)).random()  # its first draw
        scale = 0.0 if sampler.greedy else 1.0 / settings["temperature"]
        mine = row.copy()
        assert pick(mine, sampler.greedy, scale, u, ids, values) == expected, i
        np.testing.assert_array_equal(mine, row)  # the edits were undone


@pytest.mark.parametrize("settings", [
    {"temperature": 1.0, "presence_penalty": 0.5},
    {"temperature": 0.0, "frequency_penalty": 0.1},
    {"temperature": 0.0, "repetition_penalty": 1.2},
    {"temperature": 1.0, "top_k": 40},
    {"temperature": 1.0, "top_p": 0.9},
    {"temperature": 1.0, "logit_bias": {5: 100.0}},  # "only these tokens"
])
def test_picks_the_loop_cannot_make_exactly_are_left_to_python(settings: dict) -> None:
    assert _sampler(settings, seed=1).fixed_edits() is None


def test_greedy_ignores_truncation_so_the_loop_takes_it() -> None:
    assert _sampler({"temperature": 0.0, "top_k": 5, "top_p": 0.5}, 1).fixed_edits() is not None


class FakeLlama:
    """llama_decode and llama_get_logits_ith as C function pointers: each decode
    records its batch and writes the next logits row from `row_for(token, pos)`."""

    def __init__(self, row_for: Callable[[int, int], np.ndarray],
                 fail_at: int | None = None,
                 during: Callable[[int], None] | None = None) -> None:
        self.row = np.zeros(N_VOCAB, dtype=np.float32)
        self.calls: list[tuple[int, int, int, int, int]] = []
        self._row_for, self._fail_at, self._during = row_for, fail_at, during

        def decode(_ctx: int, batch: lc.llama_batch) -> int:
            n = len(self.calls)
            self.calls.append((batch.n_tokens, batch.token[0], batch.pos[0],
                               batch.seq_id[0][0], batch.logits[0]))
            if self._during is not None:
                self._during(n)
            if n == self._fail_at:
                return 1
            self.row[:] = self._row_for(batch.token[0], batch.pos[0])
            return 0

        self._decode = DECODE(decode)
        self._logits = LOGITS(lambda _ctx, _i: self.row.ctypes.data)

    def runner(self) -> Runner:
        return Runner(ctypes.cast(self._decode, ctypes.c_void_p).value,
                      ctypes.cast(self._logits, ctypes.c_void_p).value, 1, N_VOCAB)


def _next_of(token: int, pos: int) -> np.ndarray:
    row = np.zeros(N_VOCAB, dtype=np.float32)
    row[(token * 7 + pos) % N_VOCAB] = 9.0
    return row


def _take_all(runner: Runner) -> tuple[list[int], bool, int]:
    tokens: list[int] = []
    while True:
        got = runner.take(False)
        assert got is not None
        tokens += got[0]
        if got[4]:
            return tokens, got[4], got[5]


def test_llama_batch_layout_matches_the_binding() -> None:
    assert batch_size() == ctypes.sizeof(lc.llama_batch)


def test_a_run_decodes_each_picked_token_at_the_next_position() -> None:
    fake = FakeLlama(_next_of)
    runner = fake.runner()
    runner.run(11, 40, 3, 5, True, 0.0, None, NO_IDS, NO_IDS, NO_VALS)
    tokens, done, error = _take_all(runner)
    assert (done, error) == (True, 0)
    expected, token = [], 11
    for pos in range(40, 45):
        token = (token * 7 + pos) % N_VOCAB
        expected.append(token)
    assert tokens == expected  # the budget: 5 picks
    # one row per decode, its logits asked for, each pick decoded next (not the last)
    assert fake.calls == [(1, t, 40 + i, 3, 1) for i, t in enumerate([11, *expected[:-1]])]
    assert runner.take(False) is None  # nothing left: the run is over


def test_a_run_ends_after_an_end_of_generation_token() -> None:
    fake = FakeLlama(_next_of)
    runner = fake.runner()
    third = (((11 * 7 + 40) % N_VOCAB * 7 + 41) % N_VOCAB * 7 + 42) % N_VOCAB
    eog = np.array([third, 999], dtype=np.int32)
    runner.run(11, 40, 0, 50, True, 0.0, None, eog, NO_IDS, NO_VALS)
    tokens, _, _ = _take_all(runner)
    assert len(tokens) == 3 and tokens[-1] == third and len(fake.calls) == 3


def test_a_seeded_run_draws_what_the_sampler_draws_token_by_token() -> None:
    rng = np.random.default_rng(9)
    rows = {pos: (rng.standard_normal(N_VOCAB) * 2).astype(np.float32)
            for pos in range(10, 40)}
    fake = FakeLlama(lambda _token, pos: rows[pos])
    settings = {"temperature": 0.8, "logit_bias": {4: 2.0, 8: -100.0}}
    runner_sampler, python_sampler = _sampler(settings, 77), _sampler(settings, 77)
    ids, values = runner_sampler.fixed_edits() or (NO_IDS, NO_VALS)
    runner = fake.runner()
    runner.run(5, 10, 0, 30, False, 1 / 0.8, runner_sampler.rng.bit_generator,
               NO_IDS, ids, values)
    tokens, _, _ = _take_all(runner)
    assert tokens == [python_sampler.sample(rows[pos].copy()) for pos in range(10, 40)]
    # ... and the generator moved on exactly one draw per token
    assert runner_sampler.rng.random() == python_sampler.rng.random()


def test_an_interrupt_ends_the_run_after_the_decode_in_flight() -> None:
    holder: list[Runner] = []
    fake = FakeLlama(_next_of, during=lambda n: holder[0].interrupt() if n == 2 else None)
    runner = fake.runner()
    holder.append(runner)
    runner.clear()
    runner.run(1, 0, 0, 100, True, 0.0, None, NO_IDS, NO_IDS, NO_VALS)
    tokens, done, _ = _take_all(runner)
    assert done and len(tokens) == 3 and len(fake.calls) == 3
    assert runner.interrupted()
    runner.clear()  # the next run goes on until its budget
    assert not runner.interrupted()
    runner.run(1, 0, 0, 4, True, 0.0, None, NO_IDS, NO_IDS, NO_VALS)
    assert len(_take_all(runner)[0]) == 4


def test_a_failed_decode_ends_the_run_with_its_code() -> None:
    fake = FakeLlama(_next_of, fail_at=2)
    runner = fake.runner()
    runner.run(1, 0, 0, 100, True, 0.0, None, NO_IDS, NO_IDS, NO_VALS)
    tokens, done, error = _take_all(runner)
    assert done and error == 1 and len(tokens) == 2


def test_tokens_cross_threads_and_the_eventfd_says_when() -> None:
    """The engine thread runs; another (the event loop) takes what it picked as it
    goes, woken through the eventfd."""
    gate = threading.Event()
    fake = FakeLlama(_next_of, during=lambda n: gate.wait(5) if n == 1 else None)
    runner = fake.runner()
    worker = threading.Thread(target=runner.run,
                              args=(3, 0, 0, 6, True, 0.0, None, NO_IDS, NO_IDS, NO_VALS))
    worker.start()
    fd = runner.fileno()
    assert select.select([fd], [], [], 5)[0] == [fd]  # the first token is ready
    first = runner.take(False)
    assert first is not None and len(first[0]) == 1 and not first[4]
    assert runner.take(False) is None  # the second decode waits on the gate
    gate.set()
    rest: list[int] = []
    while (got := runner.take(True)) is not None:
        rest += got[0]
        if got[4]:
            break
    worker.join(5)
    assert len(first[0]) + len(rest) == 6
    # The eventfd may still read as set (take reads it before looking, so that no
    # token is ever missed); a wake-up then finds nothing.
    assert runner.take(False) is None


def test_a_closed_runner_refuses_runs_and_wakes_a_blocked_taker() -> None:
    runner = FakeLlama(_next_of).runner()
    got: list[object] = []
    taker = threading.Thread(target=lambda: got.append(runner.take(True)))
    taker.start()
    runner.close()
    taker.join(5)
    assert got == [None]
    with pytest.raises(RuntimeError, match="closed"):
        runner.run(1, 0, 0, 4, True, 0.0, None, NO_IDS, NO_IDS, NO_VALS)


def test_bad_runs_are_refused() -> None:
    runner = FakeLlama(_next_of).runner()
    with pytest.raises(ValueError, match="budget"):
        runner.run(1, 0, 0, 0, True, 0.0, None, NO_IDS, NO_IDS, NO_VALS)
    with pytest.raises(ValueError, match="vocabulary"):
        runner.run(1, 0, 0, 4, True, 0.0, None, NO_IDS, np.array([N_VOCAB], np.int32),
                   np.array([1.0], np.float32))
    with pytest.raises(ValueError, match="length"):
        runner.run(1, 0, 0, 4, True, 0.0, None, NO_IDS, np.array([1], np.int32), NO_VALS)
    with pytest.raises(ValueError, match="outside"):
        pick(np.zeros(4, np.float32), True, 0.0, 0.0, np.array([9], np.int32),
             np.array([1.0], np.float32))
