"""Repacking the KV cache under load, against a small model of llama.cpp's unified cache.

`SimKV` places tokens the way llama.cpp does (the lowest free cells from the
allocation cursor, which a freed cell pulls down) and keeps each cell's position,
sequence ids and content. After every step the tests check the scheduler's view of
every slot against it: the same cells, in position order, holding the tokens the
slot believes it holds. That is what keeps a seeded request's logits bitwise the
same whatever else runs.
"""

from __future__ import annotations

import random

from chatd.engine.scheduler import Scheduler
from chatd.engine.sequence import Group, Status
from tests.unit.test_scheduler import make_group


class SimKV:
    def __init__(self, size: int = 4000) -> None:
        self.pos: list[int | None] = [None] * size
        self.seqs: list[set[int]] = [set() for _ in range(size)]
        self.content: list[object] = [None] * size
        self.head = 0
        self.saves = 0

    def _drop(self, i: int, seq_id: int) -> None:
        self.seqs[i].discard(seq_id)
        if not self.seqs[i]:
            self.pos[i] = None
            self.content[i] = None
            self.head = min(self.head, i)

    def seq_remove(self, seq_id: int, start: int = 0, end: int = -1) -> None:
        stop = end if end >= 0 else 1 << 30
        start = max(0, start)
        for i, ids in enumerate(self.seqs):
            if seq_id in ids and start <= self.pos[i] < stop:
                self._drop(i, seq_id)

    def seq_copy(self, src: int, dst: int, start: int = 0, end: int = -1) -> None:
        stop = end if end >= 0 else 1 << 30
        start = max(0, start)
        for i, ids in enumerate(self.seqs):
            if src in ids and start <= self.pos[i] < stop:
                ids.add(dst)

    def clear(self) -> None:
        for i in range(len(self.seqs)):
            self.seqs[i] = set()
            self.pos[i] = None
            self.content[i] = None
        self.head = 0

    def place(self, seq_id: int, pos: int, content: object) -> int:
        i = self.head
        while self.seqs[i]:
            i += 1
        self.seqs[i] = {seq_id}
        self.pos[i] = pos
        self.content[i] = content
        self.head = i + 1
        return i

    def seq_save(self, seq_id: int) -> list[tuple[int, object]]:
        self.saves += 1
        return [(self.pos[i], self.content[i]) for i in self.cells_of(seq_id)]

    def seq_restore(self, data: list[tuple[int, object]], seq_id: int) -> None:
        self.seq_remove(seq_id)
        for pos, content in data:
            self.place(seq_id, pos, content)

    def cells_of(self, seq_id: int) -> list[int]:
        return [i for i, ids in enumerate(self.seqs) if seq_id in ids]


def step(sched: Scheduler, kv: SimKV, rng: random.Random) -> None:
    """One engine step: repack check, admission, decode (placed in SimKV), sampling."""
    sched.maybe_repack()
    sched.admit()
    plan = sched.plan()
    for token, pos, seq_id in zip(plan.tokens, plan.positions, plan.seq_ids, strict=True):
        kv.place(seq_id, pos, (pos, token))
    sched.commit(plan)
    for seq, _row in plan.samplers:
        if seq.status is Status.PREFILL:
            seq.status = Status.DECODE
            for sib in sched.fork(seq):
                sib.status = Status.DECODE
                sib.tokens.append(rng.randrange(1000, 2000))
                sib.n_generated += 1
        seq.tokens.append(rng.randrange(1000, 2000))
        seq.n_generated += 1
        if seq.n_generated >= seq.group.request.params.max_new_tokens:
            seq.status = Status.FINISHED
            sched.release(seq)
    for seq in list(sched.running):
        if seq.status is Status.DECODE and seq.n_generated >= \
                seq.group.request.params.max_new_tokens:
            seq.status = Status.FINISHED
            sched.release(seq)


def check(sched: Scheduler, kv: SimKV) -> None:
    for slot in sched.slots:
        cells = kv.cells_of(slot.id)
        assert cells == slot.cells, f"slot {slot.id}: scheduler and cache disagree"
        assert [kv.pos[c] for c in cells] == list(range(len(cells)))
        for position, cell in enumerate(cells):
            assert kv.content[cell] == (position, slot.tokens[position])
    assert sched.allocated <= len(kv.seqs)


def test_repacks_under_load_keep_every_sequence_in_order_and_intact() -> None:
    kv = SimKV()
    sched = Scheduler(kv, n_slots=12, kv_cells=4000, max_running=6, batch_tokens=64,
                      prefill_chunk=8, repack_cells=24)
    rng = random.Random(7)
    system = [7, 7, 7, 7, 7]  # a shared system prompt, so prefixes are shared
    groups: list[Group] = []
    for i in range(40):
        prompt = [*system, 100 + i, 101 + i] if i % 2 else [200 + i] * rng.randrange(2, 12)
        groups.append(make_group(prompt, n=1 + (i % 5 == 0), max_new=rng.randrange(3, 20)))
    for g in groups:
        sched.add(g)
    spans = []
    for _ in range(2000):
        if not sched.running and not sched.waiting:
            break
        step(sched, kv, rng)
        check(sched, kv)
        if sched.running:
            spans.append(max(c for s in sched.slots for c in s.cells) + 1)
    assert not sched.running and not sched.waiting, "every request completed"
    assert sched.repacks >= 3
    assert sched.epochs == 0, "no drain was needed"
    assert max(spans) < 400, "garbage never piles up"


def test_no_repack_below_the_garbage_threshold() -> None:
    kv = SimKV()
    sched = Scheduler(kv, n_slots=4, kv_cells=4000, max_running=2, batch_tokens=64,
                      prefill_chunk=8, repack_cells=1000)
    rng = random.Random(1)
    for i in range(6):
        sched.add(make_group([300 + i] * 5, max_new=10))
    while sched.running or sched.waiting:
        step(sched, kv, rng)
        check(sched, kv)
    assert sched.repacks == 0 and kv.saves == 0


def _park_two_old_entries(park_cells: int) -> tuple[Scheduler, SimKV, random.Random]:
    """Two idle entries of 601 cells, then four requests running beside them: over the
    in-cache budget, so a repack moves the entries out of the cache."""
    kv = SimKV()
    sched = Scheduler(kv, n_slots=8, kv_cells=4000, max_running=4, batch_tokens=64,
                      prefill_chunk=64, repack_cells=1, park_cells=park_cells)
    rng = random.Random(3)
    for i in range(2):
        sched.add(make_group([400 + i] * 600, max_new=2))
        while sched.running or sched.waiting:
            step(sched, kv, rng)
    for i in range(4):
        sched.add(make_group([500 + i] * 4, max_new=50))
    for _ in range(10):
        step(sched, kv, rng)
        check(sched, kv)
    assert sched.repacks >= 1
    return sched, kv, rng


def test_idle_entries_over_budget_leave_the_cache_most_recent_parked() -> None:
    sched, kv, _ = _park_two_old_entries(park_cells=1000)
    idle = [s for s in sched.slots if s.owner is None and s.tokens]
    assert len(idle) == 1 and idle[0].tokens[0] == 401, "the most recent entry stays"
    assert idle[0].parked is not None and idle[0].cells == [] and not kv.cells_of(idle[0].id)
    assert sched.parked_cells() == 601  # 600 + 1 generated
    # 400 was parked while 401's prompt ran, then dropped to make room for 401.
    assert sched.parks == 2
    assert max(c for s in sched.slots for c in s.cells) < 400, "attention scans no idle cells"


def test_a_parked_entry_is_restored_for_the_next_turn_of_its_chat() -> None:
    sched, kv, rng = _park_two_old_entries(park_cells=1000)
    entry = next(s for s in sched.slots if s.parked is not None)
    turn2 = make_group([*entry.tokens, 77, 78], max_new=5)
    sched.add(turn2)
    seq = turn2.seqs[0]
    while seq.status is Status.WAITING:  # for a runner to finish
        step(sched, kv, rng)
        check(sched, kv)  # restored cells hold the entry's tokens, in position order
    assert seq.slot == entry.id and seq.cached_tokens == 601 and sched.unparks == 1
    assert entry.parked is None and sched.parked_cells() == 0
    while sched.running or sched.waiting:
        step(sched, kv, rng)
        check(sched, kv)


def test_a_request_sharing_only_a_prefix_does_not_restore_a_parked_entry() -> None:
    sched, kv, rng = _park_two_old_entries(park_cells=1000)
    other = make_group([401] * 5 + [9], max_new=3)  # 5 of the parked entry's 601 tokens
    sched.add(other)
    while other.seqs[0].status is Status.WAITING:
        step(sched, kv, rng)
        check(sched, kv)
    assert other.seqs[0].cached_tokens == 0 and sched.unparks == 0
    assert sched.parked_cells() == 601


def test_parking_is_bounded_least_recent_dropped_first() -> None:
    sched, _, _ = _park_two_old_entries(park_cells=500)
    assert sched.parked_cells() == 0 and not any(
        s.tokens for s in sched.slots if s.owner is None), "601 cells never fit in 500"


def test_a_request_blocked_by_the_epoch_gets_in_by_a_repack_not_a_drain() -> None:
    kv = SimKV()
    sched = Scheduler(kv, n_slots=6, kv_cells=4000, max_running=3, batch_tokens=64,
                      prefill_chunk=64, epoch_cells=60, repack_cells=1000)
    rng = random.Random(5)
    runner = make_group([600] * 4, max_new=200)
    sched.add(runner)
    step(sched, kv, rng)
    for i in range(5):  # short requests beside it fill the epoch with garbage
        sched.add(make_group([700 + i] * 8, max_new=2))
        sched.add(make_group([800 + i] * 8, max_new=2))
        for _ in range(3):
            step(sched, kv, rng)
            check(sched, kv)
    late = make_group([900] * 6, max_new=5)
    sched.add(late)
    step(sched, kv, rng)
    check(sched, kv)
    assert late.seqs[0].status is not Status.WAITING and runner.seqs[0] in sched.running
    assert sched.repacks >= 1 and sched.epochs == 0
