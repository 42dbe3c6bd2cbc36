"""The KV cache moving between two contexts (engine/weights.py): file weights and copy.

`Scheduler.migrate` is a repack across contexts: the running sequences' cells and
the idle entries a repack keeps are saved in one cache and restored in the other
from cell 0; the rest are parked. Against `SimKV` (llama.cpp's cell placement),
under load with shared prefixes, `n` forks, repacks, parks and prompts adopted from
the dense prompt context, moving back and forth at random: after every step every
slot must hold its tokens in position order, in the cells the scheduler believes,
in whichever cache is active, and every request must complete.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from chatd.engine.scheduler import Scheduler
from chatd.engine.sequence import Group
from chatd.engine.streams import MIGRATE_IDLE_CELLS, StreamScheduler
from chatd.engine.weights import LONE_SECONDS, WeightSwitch
from tests.unit.test_adopt import compute_elsewhere
from tests.unit.test_repack import SimKV, check, step
from tests.unit.test_scheduler import make_group


class TwoKV:
    """Two caches under one object, as the served model holds one of two contexts."""

    def __init__(self, size: int = 4000) -> None:
        self.caches = (SimKV(size), SimKV(size))
        self.active = 0
        self.switches = 0

    def switch(self) -> None:
        self.active ^= 1
        self.switches += 1

    def __getattr__(self, name: str) -> object:
        return getattr(self.caches[self.active], name)


def load(rng: random.Random, count: int) -> list[Group]:
    system = [7] * 6  # a shared system prompt: shared cells move as shared cells
    groups = []
    for i in range(count):
        prompt = ([*system, *range(300 + 20 * i, 300 + 20 * i + rng.randrange(2, 20))]
                  if i % 2 else [200 + i] * rng.randrange(2, 30))
        groups.append(make_group(prompt, n=1 + (i % 5 == 0), max_new=rng.randrange(3, 20)))
    return groups


def drive(sched: Scheduler, kv: TwoKV, rng: random.Random, groups: int,
          check: Callable[[Any, Any], None]) -> None:
    """Run a load to the end, prompts adopted and the cache moved at random, checking
    every slot after every move and step."""
    for g in load(rng, groups):
        sched.add(g)
    for _ in range(3000):
        if not sched.running and not sched.waiting:
            break
        sched.admit()
        compute_elsewhere(sched, kv, rng)
        if rng.random() < 0.15:
            sched.migrate(kv.switch)
            check(sched, kv)  # ... in the cache now active
        step(sched, kv, rng)
        check(sched, kv)
    assert not sched.running and not sched.waiting, "every request completed"


def test_moving_the_pool_back_and_forth_keeps_every_slot_in_order_and_intact() -> None:
    kv = TwoKV()
    sched = Scheduler(kv, n_slots=12, kv_cells=4000, max_running=6, batch_tokens=64,
                      prefill_chunk=8, repack_cells=24, park_cells=200)
    drive(sched, kv, random.Random(5), 50, check)
    assert kv.switches >= 20 and sched.repacks >= 1 and sched.parks >= 1
    assert sched.committed_cells() == sched.allocated, "no reservation left behind"


def test_an_idle_pool_moves_its_recent_entries_and_parks_the_rest() -> None:
    kv = TwoKV()
    sched = Scheduler(kv, n_slots=8, kv_cells=4000, max_running=4, batch_tokens=64,
                      prefill_chunk=64)
    rng = random.Random(2)
    old = make_group(list(range(10, 400)), max_new=3)   # 390 cells: over the idle budget
    new = make_group(list(range(500, 540)), max_new=3)
    for g in (old, new):
        sched.add(g)
        while sched.running or sched.waiting:
            step(sched, kv, rng)
    sched.migrate(kv.switch)
    check(sched, kv)
    kept = [s for s in sched.slots if s.cells]
    parked = [s for s in sched.slots if s.parked is not None]
    assert [s.tokens[:3] for s in kept] == [[500, 501, 502]]
    assert [s.tokens[:3] for s in parked] == [[10, 11, 12]]
    # The parked chat's next turn still finds it, restored into the active cache.
    turn = make_group([*old.seqs[0].tokens, 900, 901], max_new=2)
    sched.add(turn)
    sched.admit()
    assert turn.seqs[0].n_cached == len(old.seqs[0].tokens) - 1  # its last token never ran
    check(sched, kv)


def stream_check(sched: StreamScheduler, kv: TwoKV) -> None:
    """Each stream holds its slot's tokens at their positions (SimKV is one pool, so
    where a stream's cells sit among the others' means nothing here)."""
    for slot in sched.slots:
        held = sorted(kv.content[c] for c in kv.cells_of(slot.id))
        assert held == list(enumerate(slot.tokens)), f"stream {slot.id}"


def test_streams_move_with_their_prefix_cache_within_the_budget() -> None:
    kv = TwoKV(size=8 * 600)
    sched = StreamScheduler(kv, n_slots=8, stream_cells=600, max_running=4, batch_tokens=64,
                            prefill_chunk=8)
    rng = random.Random(9)
    drive(sched, kv, rng, 30, stream_check)
    assert kv.switches >= 10
    # Idle entries past the budget are dropped rather than copied.
    big = make_group(list(range(1, 550)), max_new=3)
    sched.add(big)
    while sched.running or sched.waiting:
        step(sched, kv, rng)
    entries = sum(len(s.tokens) for s in sched.slots)
    sched.migrate(kv.switch)
    stream_check(sched, kv)
    assert sum(len(s.tokens) for s in sched.slots) <= min(entries, MIGRATE_IDLE_CELLS)


class Ctx:
    """Stands in for the copy's context: `swapped` is what WeightSwitch.dense reads."""

    swapped = False

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("sequences", "prefill", "after", "want"), [
    (2, False, 0.0, True),               # a batch: the copy
    (1, False, 0.0, True),               # a lone sequence just after a batch: stays
    (1, False, LONE_SECONDS + 0.1, False),  # ... until it has been alone a while
    (0, False, LONE_SECONDS + 0.1, False),
    (1, True, LONE_SECONDS + 0.1, True),    # a long prompt still being computed keeps it
])
def test_when_the_copy_decodes(sequences: int, prefill: bool, after: float, want: bool) -> None:
    ctx = Ctx()
    switch = WeightSwitch(ctx, "BF16")  # type: ignore[arg-type]
    assert switch.wanted(1, False, 0.0) is False  # alone from the start: the file's
    assert switch.wanted(3, False, 0.0) is True
    ctx.swapped = True
    assert switch.dense
    assert switch.wanted(sequences, prefill, after) is want
    switch.broken = True
    assert switch.wanted(4, False, after) is False


def test_a_lone_long_prompt_stays_on_the_file_weights() -> None:
    # ... the dense prompt runner computes it (engine/prompts.py).
    switch = WeightSwitch(Ctx(), "BF16")  # type: ignore[arg-type]
    assert switch.wanted(1, True, 0.0) is False
