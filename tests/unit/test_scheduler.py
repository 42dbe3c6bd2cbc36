"""Scheduler policy without a model: FIFO admission, KV reservation, prefix reuse."""

from __future__ import annotations

import asyncio

from chatd.engine.sampling import Sampler
from chatd.engine.scheduler import Scheduler, common_prefix
from chatd.engine.sequence import Group, Sequence, Status
from chatd.engine.types import GenerationRequest, SamplingParams


class FakeKV:
    """Records KV operations so tests can check what the scheduler asked llama.cpp."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []

    def seq_remove(self, seq_id: int, start: int = 0, end: int = -1) -> None:
        self.ops.append(("rm", seq_id, start, end))

    def seq_copy(self, src: int, dst: int, start: int = 0, end: int = -1) -> None:
        self.ops.append(("cp", src, dst, start, end))

    def clear(self) -> None:
        self.ops.append(("clear",))


def make_group(prompt: list[int], *, n: int = 1, max_new: int = 10) -> Group:
    params = SamplingParams(max_new_tokens=max_new)
    loop = asyncio.new_event_loop()
    group = Group(GenerationRequest(prompt, params, n=n), loop=loop, queue=asyncio.Queue())
    for i in range(n):
        group.seqs.append(Sequence(group=group, index=i, sampler=Sampler(params, 100, prompt),
                                   tokens=list(prompt), n_prompt=len(prompt)))
    loop.close()
    return group


def make_scheduler(**kw: int) -> tuple[Scheduler, FakeKV]:
    kv = FakeKV()
    opts = {"n_slots": 4, "kv_cells": 1000, "max_running": 2, "batch_tokens": 64,
            "prefill_chunk": 8}
    opts.update(kw)
    return Scheduler(kv, **opts), kv


def run_prefill(sched: Scheduler, next_token: int = 99) -> None:
    """Step until every admitted prompt is cached; each then 'samples' `next_token`."""
    while any(s.status is Status.PREFILL for s in sched.running):
        plan = sched.plan()
        sched.commit(plan)
        for seq, _row in plan.samplers:
            if seq.status is Status.PREFILL:
                seq.status = Status.DECODE
                seq.tokens.append(next_token)


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_fifo_and_running_limit() -> None:
    sched, _ = make_scheduler(max_running=2)
    groups = [make_group([1, 2, 3]) for _ in range(3)]
    for g in groups:
        sched.add(g)
    assert sched.admit() == groups[:2]
    assert list(sched.waiting) == [groups[2]]


def test_reservation_blocks_when_cells_would_overflow() -> None:
    sched, _ = make_scheduler(kv_cells=25, max_running=4)
    a = make_group(list(range(10)), max_new=10)   # reserves 20
    b = make_group(list(range(50, 60)), max_new=10)  # needs 20 more: only 5 left
    sched.add(a)
    sched.add(b)
    assert sched.admit() == [a]
    run_prefill(sched)
    sched.release(a.seqs[0])
    # Nothing runs any more: the cache is cleared (a new epoch) to make room for b.
    assert sched.admit() == [b]
    assert sched.epochs == 1


def test_prefix_cache_reuses_a_finished_sequence_slot() -> None:
    sched, kv = make_scheduler()
    first = make_group([1, 2, 3, 4, 5, 6])
    sched.add(first)
    sched.admit()
    run_prefill(sched, next_token=7)
    seq = first.seqs[0]
    sched.commit(sched.plan())  # token 7 written to the cache
    sched.release(seq)
    second = make_group([1, 2, 3, 4, 5, 6, 7, 8, 9])
    sched.add(second)
    sched.admit()
    leader = second.seqs[0]
    assert leader.cached_tokens == 7
    assert leader.n_cached == 7
    assert leader.slot == 0, "the idle entry is reused in place"
    assert not [op for op in kv.ops if op[0] == "rm"], "no cell is freed"
    plan = sched.plan()
    assert plan.tokens == [8, 9]
    assert plan.positions == [7, 8]


def test_prefix_is_copied_from_a_running_sequence() -> None:
    sched, kv = make_scheduler(max_running=3)
    a = make_group([5, 6, 7, 8, 9])
    sched.add(a)
    sched.admit()
    run_prefill(sched)
    b = make_group([5, 6, 7, 1])
    sched.add(b)
    sched.admit()
    src, dst = a.seqs[0].slot, b.seqs[0].slot
    assert src != dst
    assert ("cp", src, dst, 0, 3) in kv.ops
    assert b.seqs[0].cached_tokens == 3


def test_at_least_one_prompt_token_is_recomputed() -> None:
    sched, _ = make_scheduler()
    a = make_group([1, 2, 3])
    sched.add(a)
    sched.admit()
    run_prefill(sched)
    sched.release(a.seqs[0])
    b = make_group([1, 2, 3])
    sched.add(b)
    sched.admit()
    assert b.seqs[0].cached_tokens == 2
    assert sched.plan().tokens == [3]


def test_prefill_is_chunked_while_others_decode() -> None:
    sched, _ = make_scheduler(prefill_chunk=8, batch_tokens=64)
    a = make_group([1, 2])
    sched.add(a)
    sched.admit()
    run_prefill(sched)
    long = make_group(list(range(100, 140)))
    sched.add(long)
    sched.admit()
    plan = sched.plan()
    assert len(plan) == 1 + 8  # one decode token + one prefill chunk
    assert plan.samplers[0][0] is a.seqs[0]


def test_n_siblings_fork_from_the_leader_prompt() -> None:
    sched, kv = make_scheduler(max_running=4)
    g = make_group([1, 2, 3, 4], n=3)
    sched.add(g)
    sched.admit()
    assert [s.status for s in g.seqs] == [Status.PREFILL, Status.FORKING, Status.FORKING]
    plan = sched.plan()
    assert plan.tokens == [1, 2, 3, 4], "the prompt is prefilled once, not n times"
    sched.commit(plan)
    siblings = sched.fork(g.seqs[0])
    assert len(siblings) == 2
    for sib in siblings:
        assert ("cp", g.seqs[0].slot, sib.slot, 0, 4) in kv.ops
        assert sib.n_cached == 4


def test_cells_are_detached_to_trash_never_freed_while_running() -> None:
    """A freed hole would be refilled first and put a running sequence's next cell
    before its earlier ones; detached cells stay allocated under the trash id."""
    sched, kv = make_scheduler(max_running=3)
    a = make_group([1, 2, 3, 4, 5, 6])
    sched.add(a)
    sched.admit()
    run_prefill(sched)
    sched.release(a.seqs[0])
    runner = make_group([40, 41, 42])
    sched.add(runner)
    sched.admit()
    b = make_group([1, 2, 3, 9])  # shares 3 tokens with a's idle entry
    sched.add(b)
    sched.admit()
    slot = b.seqs[0].slot
    assert kv.ops[-2:] == [("cp", slot, sched.trash, 3, -1), ("rm", slot, 3, -1)]
    assert ("clear",) not in kv.ops


def test_epoch_ends_only_when_nothing_runs() -> None:
    sched, kv = make_scheduler(kv_cells=1000, max_running=3, epoch_cells=12)
    a = make_group(list(range(10)), max_new=4)
    sched.add(a)
    sched.admit()
    run_prefill(sched)
    assert sched.allocated == 10
    for token in (100, 101):
        sched.commit(sched.plan())
        a.seqs[0].tokens.append(token)
    assert sched.allocated == 12
    b = make_group(list(range(50, 55)))
    sched.add(b)
    assert sched.admit() == [], "the epoch is full: b waits for a to finish"
    sched.release(a.seqs[0])
    assert sched.admit() == [b]
    assert ("clear",) in kv.ops and sched.allocated == 0 and sched.epochs == 1
    assert all(not s.tokens for s in sched.slots if s.owner is None)


def _finish(sched: Scheduler, group: Group, tokens: list[int]) -> None:
    """Prefill, decode `tokens`, then release: the slot stays as a prefix cache entry."""
    run_prefill(sched, tokens[0])
    for token in tokens[1:]:
        sched.commit(sched.plan())
        group.seqs[0].tokens.append(token)
    sched.commit(sched.plan())
    sched.release(group.seqs[0])


def test_idle_follow_up_frees_the_trash_above_the_live_cells() -> None:
    """One client's next turn detaches its old tail above its shared prefix; with
    nothing running, those cells are freed and allocation resumes right there."""
    sched, kv = make_scheduler()
    a = make_group([1, 2, 3, 4, 5, 6])
    sched.add(a)
    sched.admit()
    _finish(sched, a, [70, 71, 72])
    assert sched.allocated == 9
    b = make_group([1, 2, 3, 4, 5, 6, 70, 80])  # turn 2: shares 7 tokens
    sched.add(b)
    assert sched.admit() == [b]
    assert kv.ops[-1] == ("rm", sched.trash, 0, -1)
    assert sched.allocated == 7 and sched.compactions == 1
    run_prefill(sched)
    assert sched.slots[b.seqs[0].slot].cells == list(range(8))


def test_trash_below_a_live_cell_is_kept() -> None:
    """Freeing it would let a new sequence's cells land below the prefix it reads."""
    sched, kv = make_scheduler()
    a = make_group([1, 2, 3, 4, 5, 6])
    sched.add(a)
    sched.admit()
    _finish(sched, a, [70, 71])
    c = make_group([30, 31, 32])  # another client's entry, above a's cells
    sched.add(c)
    sched.admit()
    _finish(sched, c, [90])
    b = make_group([1, 2, 3, 4, 5, 6, 70, 80])
    sched.add(b)
    assert sched.admit() == [b]
    assert ("rm", sched.trash, 0, -1) not in kv.ops
    assert sched.compactions == 0 and sched.allocated == 12
    run_prefill(sched)
    assert sched.slots[b.seqs[0].slot].cells == [*range(7), 12]


def test_idle_entries_above_mostly_garbage_are_cut_back() -> None:
    sched, kv = make_scheduler()
    a = make_group([1, 2, 3, 4, 5, 6], max_new=30)
    sched.add(a)
    sched.admit()
    _finish(sched, a, list(range(70, 76)))  # cells 0..11
    c = make_group([30, 31, 32])
    sched.add(c)
    sched.admit()
    _finish(sched, c, [90])  # cells 12..15: the only live cells above a's tail
    b = make_group([1, 2, 3, 4, 5, 6, 70, 80])
    sched.add(b)
    assert sched.admit() == [b]
    assert sched.compactions == 1 and sched.allocated == 7
    assert kv.ops[-1] == ("rm", sched.trash, 0, -1)
    assert not any(slot.tokens[:3] == [30, 31, 32] for slot in sched.slots), "c's entry is cut"
    assert all(cell < 7 for slot in sched.slots for cell in slot.cells)


def test_a_prompt_sharing_only_the_start_leaves_the_entry_whole() -> None:
    """Another user with the same system prompt shares those cells from a fresh slot;
    the conversation's entry stays for its own next turn."""
    sched, kv = make_scheduler()
    a = make_group([1, 2, 3, 4, 5, 6, 7, 8])
    sched.add(a)
    sched.admit()
    entry = sched.slots[a.seqs[0].slot]
    _finish(sched, a, [70, 71, 72, 73])
    b = make_group([1, 2, 3, 50, 51])  # shares 3 of the entry's 12 tokens
    sched.add(b)
    assert sched.admit() == [b]
    assert b.seqs[0].slot != entry.id and b.seqs[0].cached_tokens == 3
    assert ("cp", entry.id, b.seqs[0].slot, 0, 3) in kv.ops
    assert entry.tokens == [1, 2, 3, 4, 5, 6, 7, 8, 70, 71, 72, 73] and entry.owner is None
    c = make_group([1, 2, 3, 4, 5, 6, 7, 8, 70, 71, 72, 73, 9, 10])  # a's next turn
    sched.add(c)
    assert sched.admit() == [c]
    assert c.seqs[0].slot == entry.id and c.seqs[0].cached_tokens == 12
