"""Prompts computed in another context (engine/prompts.py) joining their slots.

The dense prompt path saves the cells it computed and the scheduler adopts them:
restored at the allocation cursor and joined to the slot (one shared pool), or the
whole sequence restored into its stream (split layout). Against `SimKV`, the small
model of llama.cpp's cache, under a load with shared prefixes, `n` forks and
repacks: every slot must still hold its tokens in position order, in the cells the
scheduler believes, whichever way each prompt was computed.
"""

from __future__ import annotations

import random

from chatd.engine.scheduler import Scheduler
from chatd.engine.sequence import Group, Status
from chatd.engine.streams import StreamScheduler
from tests.unit.test_repack import SimKV, check, step
from tests.unit.test_scheduler import make_group


def compute_elsewhere(sched: Scheduler, kv: SimKV, rng: random.Random | None = None) -> int:
    """Adopt all but the last prompt token of prefilling sequences (some at random
    with `rng`), as the engine does after the dense context computed them; returns
    how many were adopted."""
    adopted = 0
    for seq in list(sched.running):
        if (seq.status is not Status.PREFILL or seq.pending < 3
                or (rng is not None and rng.random() < 0.3)):
            continue
        count = seq.pending - 1
        first = 0 if sched.ADOPTS_WHOLE else seq.n_cached
        data = [(pos, (pos, seq.tokens[pos])) for pos in range(first, seq.n_cached + count)]
        sched.adopt(seq, count, data)
        assert seq.pending == 1
        adopted += 1
    return adopted


def test_adopted_prompts_keep_every_slot_in_order_and_intact_under_repacks() -> None:
    kv = SimKV()
    sched = Scheduler(kv, n_slots=12, kv_cells=4000, max_running=6, batch_tokens=64,
                      prefill_chunk=8, repack_cells=24)
    rng = random.Random(11)
    system = [7] * 6  # a shared system prompt: adopted tails follow shared cells
    groups: list[Group] = []
    for i in range(40):
        prompt = ([*system, *range(300 + 20 * i, 300 + 20 * i + rng.randrange(2, 20))]
                  if i % 2 else [200 + i] * rng.randrange(2, 30))
        groups.append(make_group(prompt, n=1 + (i % 5 == 0), max_new=rng.randrange(3, 20)))
    for g in groups:
        sched.add(g)
    adopted = 0
    for _ in range(2000):
        if not sched.running and not sched.waiting:
            break
        sched.admit()
        adopted += compute_elsewhere(sched, kv, rng)
        check(sched, kv)
        step(sched, kv, rng)
        check(sched, kv)
    assert not sched.running and not sched.waiting, "every request completed"
    assert adopted >= 15 and sched.repacks >= 2
    assert sched.committed_cells() == sched.allocated, "no reservation left behind"


def test_a_stream_adopts_the_whole_sequence() -> None:
    kv = SimKV()
    sched = StreamScheduler(kv, n_slots=4, stream_cells=256, max_running=4, batch_tokens=64,
                            prefill_chunk=8)
    first = make_group(list(range(50, 80)), max_new=4)
    sched.add(first)
    sched.admit()
    rng = random.Random(3)
    assert compute_elsewhere(sched, kv) == 1
    seq = first.seqs[0]
    assert seq.n_cached == 29 and sched.slots[seq.slot].tokens == list(range(50, 79))
    assert [kv.pos[c] for c in kv.cells_of(seq.slot)] == list(range(29))
    # The next turn starts from the cached entry and adopts only its own tail, yet the
    # stream receives the whole sequence again.
    while sched.running:
        step(sched, kv, rng)
    turn = make_group([*first.seqs[0].tokens, *range(900, 940)], max_new=4)
    sched.add(turn)
    sched.admit()
    nxt = turn.seqs[0]
    cached = nxt.n_cached
    assert cached > 0
    assert compute_elsewhere(sched, kv) == 1
    assert nxt.pending == 1
    cells = kv.cells_of(nxt.slot)
    assert [kv.pos[c] for c in cells] == list(range(len(nxt.tokens) - 1))
    assert [kv.content[c][1] for c in cells] == nxt.tokens[:-1]
