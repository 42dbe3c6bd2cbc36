"""Who runs this step: FIFO admission, KV slots with a prefix cache, the step plan.

Policy:
- At most `max_running` sequences decode together (more only slows every stream
  on a CPU); later requests wait in FIFO order, and the head of the queue is never
  overtaken, so nobody starves.
- Admission reserves each sequence's worst case (prompt + max new tokens) in the
  KV cell pool, so a running sequence can never hit a full cache mid-generation.
  Cells shared through the prefix cache are counted once per slot: a safe
  overestimate.
- A finished sequence leaves its tokens in its slot as a prefix cache entry. A new
  request starts from the longest common prefix found in any slot, copying those
  cells (llama.cpp's unified cache makes a copy a reference) instead of
  recomputing them. Idle entries are evicted least-recently-used when a slot or
  cells are needed.
- Every step decodes one token for each running sequence plus prompt chunks of
  waiting ones, up to a token budget that is kept small while others decode so
  a long prompt cannot freeze their streams.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from chatd.engine.sequence import Group, Sequence, Status

_clock = itertools.count()


class KVOps(Protocol):
    def seq_remove(self, seq_id: int, start: int = 0, end: int = -1) -> None: ...
    def seq_copy(self, src: int, dst: int, start: int = 0, end: int = -1) -> None: ...


@dataclass(eq=False)
class Slot:
    """A llama.cpp sequence id and the tokens whose KV it holds (positions 0..n-1)."""

    id: int
    tokens: list[int] = field(default_factory=list)
    owner: Sequence | None = None
    last_used: int = 0


@dataclass
class StepPlan:
    """One llama_decode: which sequences contribute which tokens."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seq_ids: list[int] = field(default_factory=list)
    logits: list[bool] = field(default_factory=list)
    samplers: list[tuple[Sequence, int]] = field(default_factory=list)  # (seq, batch row)
    advanced: list[tuple[Sequence, int]] = field(default_factory=list)  # (seq, n tokens)

    def add(self, seq: Sequence, count: int, *, sample: bool) -> None:
        start = seq.n_cached
        for offset in range(count):
            self.tokens.append(seq.tokens[start + offset])
            self.positions.append(start + offset)
            self.seq_ids.append(seq.slot)
            self.logits.append(False)
        if sample:
            self.logits[-1] = True
            self.samplers.append((seq, len(self.tokens) - 1))
        self.advanced.append((seq, count))

    def __len__(self) -> int:
        return len(self.tokens)


def common_prefix(a: list[int], b: list[int]) -> int:
    m = min(len(a), len(b))
    if m == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:m]) != np.asarray(b[:m]))
    return int(diff[0]) if diff.size else m


class Scheduler:
    def __init__(self, kv: KVOps, *, n_slots: int, kv_cells: int, max_running: int,
                 batch_tokens: int, prefill_chunk: int) -> None:
        self.kv = kv
        self.slots = [Slot(i) for i in range(n_slots)]
        self.kv_cells = kv_cells
        self.max_running = max_running
        self.batch_tokens = batch_tokens
        self.prefill_chunk = prefill_chunk
        self.waiting: deque[Group] = deque()
        self.running: list[Sequence] = []
        self.prefix_hit_tokens = 0

    # ---- accounting ---------------------------------------------------------------

    def reserved_cells(self) -> int:
        """Worst-case cells of running sequences plus what idle cache entries hold."""
        total = 0
        for slot in self.slots:
            total += slot.owner.max_len if slot.owner else len(slot.tokens)
        return total

    def cells_in_use(self) -> tuple[int, int]:
        """(cells held by running sequences, cells held only as prefix cache)."""
        running = sum(len(s.tokens) for s in self.slots if s.owner)
        idle = sum(len(s.tokens) for s in self.slots if not s.owner)
        return running, idle

    # ---- admission ----------------------------------------------------------------

    def add(self, group: Group) -> None:
        self.waiting.append(group)

    def admit(self) -> list[Group]:
        """Move waiting groups into slots while room lasts; strictly FIFO."""
        admitted = []
        while self.waiting:
            group = self.waiting[0]
            if group.cancel_all:
                self.waiting.popleft()
                admitted.append(group)  # the engine finishes it as aborted
                continue
            if not self._try_admit(group):
                break
            self.waiting.popleft()
            admitted.append(group)
        return admitted

    def _try_admit(self, group: Group) -> bool:
        n = len(group.seqs)
        if len(self.running) + n > self.max_running:
            return False
        need = sum(s.max_len for s in group.seqs)
        idle = sorted((s for s in self.slots if s.owner is None), key=lambda s: s.last_used)
        if len(idle) < n:
            return False
        prompt = group.seqs[0].tokens
        # Best cached prefix anywhere (idle or running slots), keeping >= 1 token to
        # prefill so the last prompt position yields logits.
        best_slot, best_len = None, 0
        for slot in self.slots:
            length = min(common_prefix(slot.tokens, prompt), len(prompt) - 1)
            if length > best_len:
                best_slot, best_len = slot, length
        # Choose the leader's slot: reuse the best idle entry in place when it is idle.
        leader_slot = best_slot if best_slot is not None and best_slot.owner is None else None
        chosen = [leader_slot] if leader_slot else []
        chosen += [s for s in idle if s is not leader_slot][: n - len(chosen)]
        # Cells: evict idle entries (LRU first, never the ones we are about to use
        # as a source) until the worst case fits.
        free = self.kv_cells - self.reserved_cells()
        free += sum(len(s.tokens) for s in chosen)  # their old contents go away
        evictable = [s for s in idle if s not in chosen and s is not best_slot]
        to_evict = []
        for slot in evictable:
            if free >= need:
                break
            if slot.tokens:
                free += len(slot.tokens)
                to_evict.append(slot)
        if free < need:
            return False
        for slot in to_evict:
            self._clear(slot)
        leader = group.seqs[0]
        self._bind(leader, chosen[0], best_slot, best_len)
        leader.status = Status.PREFILL
        for seq, slot in zip(group.seqs[1:], chosen[1:], strict=True):
            self._clear(slot)
            slot.owner = seq
            seq.slot = slot.id
            seq.status = Status.FORKING
        self.running.extend(group.seqs)
        return True

    def _bind(self, seq: Sequence, slot: Slot, source: Slot | None, reuse: int) -> None:
        """Give `seq` its slot, keeping `reuse` prompt tokens from `source`'s cells."""
        if source is slot:
            self.kv.seq_remove(slot.id, reuse, -1)
            del slot.tokens[reuse:]
        else:
            self._clear(slot)
            if source is not None and reuse > 0:
                self.kv.seq_copy(source.id, slot.id, 0, reuse)
                slot.tokens = source.tokens[:reuse]
            else:
                reuse = 0
        slot.owner = seq
        seq.slot = slot.id
        seq.n_cached = reuse
        seq.cached_tokens = reuse
        self.prefix_hit_tokens += reuse

    def _clear(self, slot: Slot) -> None:
        if slot.tokens:
            self.kv.seq_remove(slot.id, 0, -1)
            slot.tokens = []

    # ---- stepping -------------------------------------------------------------------

    def plan(self) -> StepPlan:
        """One token per decoding sequence, then prompt chunks within the budget."""
        plan = StepPlan()
        decoding = [s for s in self.running if s.status is Status.DECODE]
        for seq in decoding:
            plan.add(seq, 1, sample=True)
        budget = self.batch_tokens - len(plan)
        if decoding:
            budget = min(budget, self.prefill_chunk)
        for seq in self.running:
            if budget <= 0:
                break
            if seq.status is not Status.PREFILL:
                continue
            count = min(seq.pending, budget)
            plan.add(seq, count, sample=count == seq.pending)
            budget -= count
        return plan

    def commit(self, plan: StepPlan) -> None:
        """Record that the plan's tokens are now in the KV cache."""
        for seq, count in plan.advanced:
            slot = self.slots[seq.slot]
            slot.tokens.extend(seq.tokens[seq.n_cached:seq.n_cached + count])
            seq.n_cached += count
            slot.last_used = next(_clock)

    def fork(self, leader: Sequence) -> list[Sequence]:
        """After the leader's prompt is cached, siblings share its cells."""
        siblings = [s for s in leader.group.seqs if s.status is Status.FORKING]
        for seq in siblings:
            self.kv.seq_copy(leader.slot, seq.slot, 0, leader.n_cached)
            self.slots[seq.slot].tokens = leader.tokens[: leader.n_cached]
            seq.n_cached = leader.n_cached
            seq.cached_tokens = leader.cached_tokens
        return siblings

    def release(self, seq: Sequence) -> None:
        """A finished sequence leaves its slot as a prefix cache entry."""
        if seq.slot >= 0:
            slot = self.slots[seq.slot]
            slot.owner = None
            slot.last_used = next(_clock)
            seq.slot = -1
        if seq in self.running:
            self.running.remove(seq)
