"""The per-sequence-stream KV policy without a model: what it asks llama.cpp to do."""

from __future__ import annotations

from typing import Any

from chatd.engine.sequence import Status
from chatd.engine.streams import StreamScheduler
from tests.unit.test_scheduler import FakeKV, make_group, run_prefill


class StreamKV(FakeKV):
    """Also saves and restores: a saved sequence is its id, restoring records both."""

    def seq_save(self, seq_id: int) -> Any:
        self.ops.append(("save", seq_id))
        return ("saved", seq_id)

    def seq_restore(self, data: Any, seq_id: int) -> None:
        self.ops.append(("restore", data[1], seq_id))


def make_streams(**kw: int) -> tuple[StreamScheduler, StreamKV]:
    kv = StreamKV()
    opts = {"n_slots": 4, "stream_cells": 256, "max_running": 2, "batch_tokens": 64,
            "prefill_chunk": 8}
    opts.update(kw)
    return StreamScheduler(kv, **opts), kv


def finish(sched: StreamScheduler, group: Any, generated: list[int]) -> None:
    """Prefill, write `generated` to the cache as decoded tokens, then release."""
    run_prefill(sched, next_token=generated[0])
    seq = group.seqs[0]
    seq.tokens += generated[1:]
    while seq.n_cached < len(seq.tokens):
        sched.commit(sched.plan())
    sched.release(seq)


def test_a_chats_next_turn_continues_in_its_own_stream() -> None:
    sched, kv = make_streams()
    first = make_group([1, 2, 3, 4, 5, 6])
    sched.add(first)
    sched.admit()
    slot = first.seqs[0].slot
    finish(sched, first, [7, 8])
    second = make_group([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    sched.add(second)
    sched.admit()
    leader = second.seqs[0]
    assert leader.slot == slot and leader.cached_tokens == 8
    assert not [op for op in kv.ops if op[0] in ("save", "restore")], "nothing is copied"
    assert sched.plan().tokens == [9, 10]


def test_a_shared_start_is_copied_into_a_fresh_stream_and_the_entry_kept() -> None:
    sched, kv = make_streams()
    system = list(range(100, 140))
    chat = make_group([*system, *range(1, 50)])  # the chat is most of its entry
    sched.add(chat)
    sched.admit()
    source = chat.seqs[0].slot
    finish(sched, chat, [3, 4])
    other = make_group([*system, 9, 9, 9, 9])
    sched.add(other)
    sched.admit()
    leader = other.seqs[0]
    assert leader.slot != source and leader.cached_tokens == len(system)
    assert ("save", source) in kv.ops and ("restore", source, leader.slot) in kv.ops
    assert ("rm", leader.slot, len(system), -1) in kv.ops, "the copied tail is dropped"
    assert sched.slots[source].tokens == [*system, *range(1, 50), 3, 4], "the entry is intact"
    assert sched.scanned_cells() == sum(len(s.tokens) for s in sched.slots)
    assert sched.plan().tokens == [9, 9, 9, 9]


def test_a_stream_that_already_holds_the_shared_start_keeps_it_in_place() -> None:
    """Every idle stream began the same way (16 clients, one system prompt): the one
    given up keeps those cells instead of receiving a copy of them."""
    sched, kv = make_streams(n_slots=2)
    system = list(range(100, 140))
    for tail in (range(1, 50), range(50, 99)):  # each chat is most of its entry
        chat = make_group([*system, *tail])
        sched.add(chat)
        sched.admit()
        finish(sched, chat, [7, 8])
    entries = [list(s.tokens) for s in sched.slots]
    kv.ops.clear()
    other = make_group([*system, 9, 9])
    sched.add(other)
    sched.admit()
    leader = other.seqs[0]
    assert leader.cached_tokens == len(system)
    assert not [op for op in kv.ops if op[0] in ("save", "restore")], "nothing is copied"
    assert ("rm", leader.slot, len(system), -1) in kv.ops, "only the old tail is dropped"
    kept = sched.slots[1 - leader.slot]
    assert kept.tokens == entries[kept.id], "the best entry is intact"
    assert sched.plan().tokens == [9, 9]


def test_a_few_shared_tokens_are_not_worth_restoring_a_long_entry() -> None:
    sched, kv = make_streams()
    long = make_group([1, *range(200, 300)])
    sched.add(long)
    sched.admit()
    finish(sched, long, [5])
    short = make_group([1, 2, 3])
    sched.add(short)
    sched.admit()
    assert short.seqs[0].cached_tokens == 0
    assert not [op for op in kv.ops if op[0] in ("save", "restore")]


def test_n_siblings_get_the_leaders_prompt_by_copy() -> None:
    sched, kv = make_streams(max_running=3)
    g = make_group([1, 2, 3, 4], n=3)
    sched.add(g)
    sched.admit()
    assert [s.status for s in g.seqs] == [Status.PREFILL, Status.FORKING, Status.FORKING]
    plan = sched.plan()
    assert plan.tokens == [1, 2, 3, 4], "the prompt is prefilled once, not n times"
    sched.commit(plan)
    siblings = sched.fork(g.seqs[0])
    assert len(siblings) == 2 and len({s.slot for s in g.seqs}) == 3
    for sib in siblings:
        assert ("restore", g.seqs[0].slot, sib.slot) in kv.ops
        assert sib.n_cached == 4 and sched.slots[sib.slot].tokens == [1, 2, 3, 4]


def test_rows_go_in_stream_order() -> None:
    """llama.cpp cuts a batch over streams into runs of consecutive sequence ids."""
    sched, _ = make_streams(n_slots=4, max_running=4)
    groups = [make_group([10 * i + 1, 10 * i + 2]) for i in range(4)]
    for g in groups:
        sched.add(g)
    sched.admit()
    run_prefill(sched)
    # Free streams 0 and 2, then admit a new request into one of them.
    for g in (groups[0], groups[2]):
        sched.release(g.seqs[0])
    late = make_group([7, 7, 7])
    sched.add(late)
    sched.admit()
    plan = sched.plan()
    assert plan.seq_ids == sorted(plan.seq_ids)
    for seq, row in plan.samplers:
        rows = [i for i, slot in enumerate(plan.seq_ids) if slot == seq.slot]
        assert row == rows[-1], "each sequence samples at its own last row"
        assert plan.tokens[rows[0]:row + 1] == seq.tokens[seq.n_cached:seq.n_cached + len(rows)]
    assert plan.prefill_tokens == 3 and plan.decode_rows == 2


def test_cells_are_freed_in_place_and_streams_limit_admission() -> None:
    sched, kv = make_streams(n_slots=2, max_running=2)
    a, b, c = (make_group([i, i + 1]) for i in (1, 11, 21))
    for g in (a, b, c):
        sched.add(g)
    assert sched.admit() == [a, b], "one stream per running sequence"
    run_prefill(sched)
    seq = a.seqs[0]
    seq.tokens += [5, 6]
    sched.commit(sched.plan())
    seq.n_cached -= 1  # the last token was a rejected guess
    sched.truncate(seq)
    assert kv.ops[-1] == ("rm", seq.slot, seq.n_cached, -1)
    assert sched.maybe_repack() is False
    sched.release(seq)
    assert sched.admit() == [c]
    assert sched.cells_in_use() == (3, 0), "b's three tokens; c's stream was emptied"
    assert sched.scanned_cells() == 3


def test_a_new_sequence_fills_a_gap_between_running_streams() -> None:
    """Each run of consecutive busy streams is a micro-batch (a pass over the weights)."""
    sched, _ = make_streams(n_slots=6, max_running=6)
    groups = [make_group([10 * i + 1, 10 * i + 2]) for i in range(4)]
    for g in groups:
        sched.add(g)
    sched.admit()
    run_prefill(sched)
    assert [g.seqs[0].slot for g in groups] == [0, 1, 2, 3]
    sched.release(groups[1].seqs[0])  # streams 0, 2, 3 run; 1 is a gap; 4 and 5 idle
    late = make_group([7, 7, 7])
    sched.add(late)
    sched.admit()
    assert late.seqs[0].slot == 1
    assert sorted(sched.plan().seq_ids) == sched.plan().seq_ids
