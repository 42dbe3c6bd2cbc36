"""KV policy for llama.cpp's per-sequence streams (`kv_unified=False`).

In one shared cell pool (scheduler.py) every decoding row scans the mask of every
occupied cell, its own sequence's or not: at 16 sequences that is ~15-19% of a step
on a 2-core CPU (`benchmarks.ceiling --split-kv`). With one stream per sequence id a
row reads only its own stream, which is how llama-server runs `-np N`. The price is
llama.cpp's: each stream is a fixed `kv_cells / streams` cells, and cells cannot be
shared across streams, so a prefix found in another stream is copied (its cells
saved and restored, ~23 KB a token for SmolLM2 at f16: a 1,000-token prefix in
a few milliseconds instead of seconds of prefill).

Policy, on top of the shared scheduler's admission and step plan:
- A stream is a slot. A finished sequence leaves its tokens there as a prefix cache
  entry; a request that continues an idle entry (a chat's next turn) takes that
  stream over, anything else takes another idle stream (see below) and copies its
  longest cached prefix into it when that saves enough prefill.
- No cell bookkeeping: llama.cpp refills a stream's freed cells from the lowest,
  which is right after the tokens kept, so nothing needs repacking or parking.
- llama.cpp splits a batch over streams into micro-batches of consecutive sequence
  ids, each a pass over the weights: a step's rows go in stream order, and a new
  sequence takes an idle stream beside running ones when there is one, else the
  least recently used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatd.engine.scheduler import DRAFT_ROWS, KVOps, Scheduler, Slot, StepPlan, continues
from chatd.engine.sequence import Group, Sequence

COPY_RATIO = 64  # copy a prefix when it is at least 1/64 of the entry restored for it
MIGRATE_IDLE_CELLS = 4096  # idle prefix-cache cells that move with the running ones


class StreamScheduler(Scheduler):
    def __init__(self, kv: KVOps, *, n_slots: int, stream_cells: int, max_running: int,
                 batch_tokens: int, prefill_chunk: int) -> None:
        super().__init__(kv, n_slots=n_slots, kv_cells=n_slots * stream_cells,
                         max_running=max_running, batch_tokens=batch_tokens,
                         prefill_chunk=prefill_chunk, park_cells=0)

    # ---- accounting ---------------------------------------------------------------

    def cells_in_use(self) -> tuple[int, int]:
        running = sum(len(s.tokens) for s in self.slots if s.owner)
        idle = sum(len(s.tokens) for s in self.slots if not s.owner)
        return running, idle

    def committed_cells(self) -> int:
        return sum(len(s.tokens) for s in self.slots)

    def scanned_cells(self) -> int:
        return self.committed_cells()  # each stream's attention reads its own cells

    # ---- admission ----------------------------------------------------------------

    def _try_admit(self, group: Group) -> bool:
        """A stream per sequence; the prompt always fits one (Engine.generate checks
        it against the context size, which is at most a stream)."""
        idle = self._idle_for(len(group.seqs))
        if idle is None:
            return False
        best_slot, best_len = self._best_prefix(group.seqs[0].tokens)
        if (best_slot is not None and not (best_slot.owner is None
                                           and continues(best_slot, best_len))
                and best_len * COPY_RATIO < len(best_slot.tokens)):
            best_slot, best_len = None, 0  # restoring the entry costs more than it saves
        self._place(group, idle, best_slot, best_len)
        self.running.extend(group.seqs)
        return True

    def _idle_for(self, n: int) -> list[Slot] | None:
        """Idle streams, those beside running ones first: llama.cpp decodes each run of
        consecutive busy streams as a micro-batch of its own, so a stream taken in a
        gap saves a pass over the weights every step. Then least recently used first,
        so that prefix cache entries stay longest."""
        idle = super()._idle_for(n)
        if idle is None:
            return None

        def busy(i: int) -> bool:
            return 0 <= i < len(self.slots) and self.slots[i].owner is not None

        return sorted(idle, key=lambda s: -(busy(s.id - 1) + busy(s.id + 1)))

    def maybe_repack(self) -> bool:
        return False  # a stream's freed cells are reused in place

    def migrate(self, switch: Callable[[], None]) -> None:
        """Move every running stream, and the most recently used idle entries within
        MIGRATE_IDLE_CELLS, into another context (engine/weights.py); `switch` makes
        `self.kv` that context. The other idle entries are dropped (streams park
        nothing)."""
        keep = [s for s in self.slots if s.owner is not None and s.tokens]
        budget = MIGRATE_IDLE_CELLS
        for slot in sorted((s for s in self.slots if s.owner is None and s.tokens),
                           key=lambda s: s.last_used, reverse=True):
            if len(slot.tokens) <= budget:
                budget -= len(slot.tokens)
                keep.append(slot)
        saved = [(slot, self.kv.seq_save(slot.id)) for slot in keep]
        switch()
        self.kv.clear()
        kept = {id(slot) for slot in keep}
        for slot in self.slots:
            if id(slot) not in kept:
                slot.tokens = []
        for slot, data in saved:
            self.kv.seq_restore(data, slot.id)

    # ---- cells --------------------------------------------------------------------

    def _share(self, source: Slot, slot: Slot, count: int) -> None:
        """Copy the first `count` tokens of `source`'s stream into the empty `slot`'s:
        llama.cpp copies across streams only whole buffers, so the source's cells
        are saved and restored, and the tail past `count` dropped again."""
        self.kv.seq_restore(self.kv.seq_save(source.id), slot.id)
        if len(source.tokens) > count:
            self.kv.seq_remove(slot.id, count, -1)
        slot.tokens = source.tokens[:count]
        self.copied_tokens += count

    def _detach(self, slot: Slot, start: int) -> None:
        if len(slot.tokens) > start:
            self.kv.seq_remove(slot.id, start, -1)
            del slot.tokens[start:]

    ADOPTS_WHOLE = True

    def adopt(self, seq: Sequence, count: int, data: Any) -> None:
        """`data` is the whole sequence (the prefix it was given and the new cells):
        restoring a stream replaces what it held, and the prefix bytes are the same."""
        self.kv.seq_restore(data, seq.slot)
        self._adopted(self.slots[seq.slot], seq, count)

    def _placed(self, slot: Slot, seq: Sequence, count: int) -> None:
        pass  # where llama.cpp puts a stream's cells matters to nothing here

    # ---- stepping -------------------------------------------------------------------

    def _draft_room(self, decoding: int) -> int:
        # A draft's cells fit the stream: Engine._draft keeps within the context size.
        return DRAFT_ROWS - decoding

    def plan(self, draft: Callable[[Sequence, int, int], list[int]] | None = None
             ) -> StepPlan:
        """The shared plan, its rows regrouped by stream so that llama.cpp's
        micro-batches (runs of consecutive sequence ids) stay as few as they can."""
        plan = super().plan(draft)
        if len(plan.advanced) < 2:
            return plan
        sampled = {seq for seq, _row in plan.samplers}
        ordered = StepPlan(decode_rows=plan.decode_rows, prefill_tokens=plan.prefill_tokens,
                           media=plan.media, awaiting=plan.awaiting)
        for seq, count in sorted(plan.advanced, key=lambda item: item[0].slot):
            guess = plan.drafts.get(seq)
            if guess is not None:
                ordered.add_draft(seq, guess)
            else:
                ordered.add(seq, count, sample=seq in sampled)
        return ordered
