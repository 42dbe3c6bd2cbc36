"""Who runs this step: FIFO admission, KV slots with a prefix cache, the step plan.

This is the policy for one KV cell pool that all sequences share (llama.cpp's
unified cache); streams.py adapts it to one stream per sequence.

Policy:
- At most `max_running` sequences decode together (more only slows every stream
  on a CPU); later requests wait in FIFO order, and the head of the queue is never
  overtaken, so nobody starves.
- KV cells are handed out in order and no cell is freed while anything runs.
  Flash attention visits a sequence's cells in cache order, so a sequence whose
  later tokens landed in a hole below its earlier ones would get (slightly)
  different logits than the same request run alone; llama.cpp fills the lowest
  freed hole first. So cells a sequence no longer needs are detached to a `trash`
  sequence id instead of removed, and llama.cpp keeps allocating upward. Within
  an epoch (the time since the cache was last empty) cells are handed out in
  write order, so the scheduler knows each token's cell.
- Attention scans every cell below the highest one in use, dead or alive, so
  garbage is reclaimed two ways. Whenever nothing runs, the trash is freed from
  its lowest cell up (idle cache entries above that cell are cut back to it when
  at least half the cells above are garbage). While sequences run, a *repack*
  (`maybe_repack`) saves every live sequence's cells, empties the cache and
  restores them from cell 0, byte for byte and in order, once enough cells are
  garbage or when that is what lets the next request in. Only if the live cells
  alone fill the epoch does admission wait for running sequences to finish.
  Admission reserves each sequence's worst case (new prompt cells + max new
  tokens), so a running sequence never meets a full cache.
- A finished sequence leaves its tokens in its slot as a prefix cache entry. A new
  request starts from the longest common prefix found in any slot, sharing those
  cells (llama.cpp's unified cache makes a copy a reference) instead of
  recomputing them. Idle entries give up their slot least-recently-used first.
- Idle entries cost decoding: every decoding row scans every cell below the
  highest one in use (measured at B=1: ~2% of a step per 1,000 idle cells). So
  while anything runs, a repack keeps at most `IDLE_CELLS_RUNNING` idle cells in
  the cache and *parks* the other entries in host memory (their saved bytes),
  most recently used first, up to `park_cells`. A request whose best prefix is
  parked gets it restored at the allocation cursor (a memory copy, ~12 KB a cell
  for SmolLM2) instead of recomputed.
- Every step decodes one token for each running sequence plus prompt chunks of
  waiting ones, up to a token budget that is kept small while others decode so
  a long prompt cannot freeze their streams.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from chatd.engine.sequence import Group, Sequence, Status

if TYPE_CHECKING:
    from chatd.engine.multimodal import MediaSpan

_clock = itertools.count()

REPACK_CELLS = 256        # garbage cells that make a repack worth its ~1 ms
IDLE_CELLS_RUNNING = 256  # idle prefix-cache cells a repack keeps in the cache
DRAFT_ROWS = 48           # decode rows plus guessed rows in one step, at most


class KVOps(Protocol):
    def seq_remove(self, seq_id: int, start: int = 0, end: int = -1) -> None: ...
    def seq_copy(self, src: int, dst: int, start: int = 0, end: int = -1) -> None: ...
    def clear(self) -> None: ...
    def seq_save(self, seq_id: int) -> Any: ...
    def seq_restore(self, data: Any, seq_id: int) -> None: ...


@dataclass(eq=False)
class Slot:
    """A llama.cpp sequence id and the tokens whose KV it holds (positions 0..n-1)."""

    id: int
    tokens: list[int] = field(default_factory=list)
    cells: list[int] = field(default_factory=list)  # KV cell of each token, ascending
    owner: Sequence | None = None
    last_used: int = 0
    parked: Any = None  # saved cells of an idle entry moved out of the cache (cells == [])


@dataclass(frozen=True)
class MediaPiece:
    """Rows `offset`.. `offset + count` of an encoded media span, for one sequence."""

    seq: Sequence
    span: MediaSpan
    offset: int
    count: int


@dataclass
class StepPlan:
    """One llama_decode: which sequences contribute which tokens."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seq_ids: list[int] = field(default_factory=list)
    logits: list[bool] = field(default_factory=list)
    samplers: list[tuple[Sequence, int]] = field(default_factory=list)  # (seq, batch row)
    advanced: list[tuple[Sequence, int]] = field(default_factory=list)  # (seq, n tokens)
    decode_rows: int = 0     # sequences contributing their next token
    prefill_tokens: int = 0  # prompt tokens riding along
    drafts: dict[Sequence, list[int]] = field(default_factory=dict)  # guessed tokens
    media: MediaPiece | None = None   # embedding rows decoded in a call of their own
    awaiting: list[MediaSpan] = field(default_factory=list)  # spans to encode first

    def add_draft(self, seq: Sequence, draft: list[int]) -> None:
        """The sequence's next token and `draft` after it, every row sampled in turn."""
        start = seq.n_cached
        row = len(self.tokens)
        self.tokens += [seq.tokens[start], *draft]
        self.positions += range(start, start + 1 + len(draft))
        self.seq_ids += [seq.slot] * (1 + len(draft))
        self.logits += [True] * (1 + len(draft))
        self.samplers.append((seq, row))
        self.advanced.append((seq, 1 + len(draft)))
        self.drafts[seq] = draft

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


def span_at(spans: tuple[MediaSpan, ...], pos: int) -> MediaSpan | None:
    """The media span holding prompt position `pos`, if any."""
    for span in spans:
        if span.start <= pos < span.end:
            return span
    return None


def next_span_start(spans: tuple[MediaSpan, ...], pos: int) -> int:
    """Where the next media span after `pos` starts (a huge number when none does)."""
    return min((span.start for span in spans if span.start > pos), default=1 << 62)


def common_prefix(a: list[int], b: list[int]) -> int:
    m = min(len(a), len(b))
    if m == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:m]) != np.asarray(b[:m]))
    return int(diff[0]) if diff.size else m


def continues(entry: Slot, shared: int) -> bool:
    """Whether a prompt sharing `shared` tokens with a cache entry carries it on (a
    chat's next turn) rather than only starting the same way (a system prompt)."""
    return shared > 0 and 2 * shared >= len(entry.tokens)


class Scheduler:
    def __init__(self, kv: KVOps, *, n_slots: int, kv_cells: int, max_running: int,
                 batch_tokens: int, prefill_chunk: int, epoch_cells: int | None = None,
                 repack_cells: int = REPACK_CELLS, park_cells: int | None = None) -> None:
        self.kv = kv
        # Attention scans every cell up to the highest one in use, so an epoch stops
        # admitting once this many cells are written, even if the pool has room.
        self.epoch_cells = min(kv_cells, epoch_cells or kv_cells)
        self.slots = [Slot(i) for i in range(n_slots)]
        self.trash = n_slots  # llama.cpp sequence id that holds detached cells
        self.scratch = n_slots + 1  # llama.cpp sequence id a repack stages tails in
        self.repack_cells = repack_cells
        # Host memory for parked entries, in cells: a quarter of the cache by default.
        self.park_cells = kv_cells // 4 if park_cells is None else park_cells
        self.parks = 0
        self.unparks = 0
        self._next_repack_check = repack_cells
        self.repacks = 0
        self.kv_cells = kv_cells
        self.max_running = max_running
        self.batch_tokens = batch_tokens
        self.prefill_chunk = prefill_chunk
        # Prompt tokens allowed per step while others decode; the engine shrinks it when
        # mixed steps get slow (prompt rows at long positions cost far more) and lets
        # it grow back. Any chunking gives the same logits, so this is pure policy.
        self.prefill_budget = prefill_chunk
        self.waiting: deque[Group] = deque()
        self.running: list[Sequence] = []
        self.prefix_hit_tokens = 0
        self.copied_tokens = 0  # prefix tokens copied, not shared (streams.py)
        self.allocated = 0      # cells written in this epoch (never freed inside it)
        self._trash_low: int | None = None  # lowest cell detached to the trash
        self.compactions = 0
        self._reserved: dict[int, int] = {}  # id(seq) -> cells it may still allocate
        self.epochs = 0

    # ---- accounting ---------------------------------------------------------------

    def committed_cells(self) -> int:
        """Cells written this epoch plus what running sequences may still write."""
        return self.allocated + sum(self._reserved.values())

    def cells_in_use(self) -> tuple[int, int]:
        """(cells held by running sequences, cells held only as prefix cache)."""
        running = sum(len(s.tokens) for s in self.slots if s.owner)
        idle = sum(len(s.cells) for s in self.slots if not s.owner)
        return running, idle

    def scanned_cells(self) -> int:
        """Cells attention scans every step: all written this epoch, live or garbage."""
        return self.allocated

    def parked_cells(self) -> int:
        """Cells of the prefix-cache entries parked in host memory."""
        return sum(len(s.tokens) for s in self.slots if s.parked is not None)

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
        idle = self._idle_for(n)
        if idle is None:
            return False
        prompt = group.seqs[0].tokens
        max_new = group.request.params.max_new_tokens
        best_slot, best_len = self._best_prefix(prompt)
        need = self._cells_for(prompt, best_slot, best_len, n * max_new)
        if (self.committed_cells() + need > self.kv_cells
                or self.allocated >= self.epoch_cells):
            if self.running:
                return False  # wait for the epoch to drain
            self._compact()
        if (self.committed_cells() + need > self.kv_cells
                or self.allocated >= self.epoch_cells):
            self._new_epoch()  # parked entries survive it: they hold no cells
            best_slot, best_len = self._best_prefix(prompt)
            need = self._cells_for(prompt, best_slot, best_len, n * max_new)
            if need > self.kv_cells:
                best_slot, best_len = None, 0
                need = len(prompt) + n * max_new
            if need > self.kv_cells:
                return False  # cannot happen: Engine.generate rejects what the pool cannot hold
        if best_slot is not None and best_slot.parked is not None:
            if not self.running:
                self._compact()  # so the restored cells land as low as they can
            self._unpark(best_slot)
        self._place(group, idle, best_slot, best_len)
        self._reserved[id(group.seqs[0])] = len(prompt) - best_len + max_new
        for seq in group.seqs[1:]:
            self._reserved[id(seq)] = max_new
        if len(self.running) == 0:
            self._compact()  # the new sequences hold only shared cells so far
        self.running.extend(group.seqs)
        return True

    def _idle_for(self, n: int) -> list[Slot] | None:
        """The idle slots, least recently used first, if `n` more sequences may run."""
        if len(self.running) + n > self.max_running:
            return None
        idle = sorted((s for s in self.slots if s.owner is None), key=lambda s: s.last_used)
        return idle if len(idle) >= n else None

    def _place(self, group: Group, idle: list[Slot], best_slot: Slot | None,
               best_len: int) -> None:
        """Give the group's sequences slots: the leader starts from `best_len` tokens of
        `best_slot`, the others wait in theirs to fork from the leader's prompt.

        The leader takes the best entry over when it is idle and this prompt continues
        it; a prompt that only shares its beginning (a system prompt) gets a fresh slot
        and shares those cells, and the entry stays for whoever continues it.
        """
        n = len(group.seqs)
        leader_slot = (best_slot if best_slot is not None and best_slot.owner is None
                       and continues(best_slot, best_len) else None)
        chosen = [leader_slot] if leader_slot else []
        fresh = [s for s in idle if s is not best_slot]
        if len(fresh) < n - len(chosen):
            fresh = [s for s in idle if s is not leader_slot]
        chosen += fresh[: n - len(chosen)]
        leader = group.seqs[0]
        self._bind(leader, chosen[0], best_slot, best_len)
        leader.status = Status.PREFILL
        for seq, slot in zip(group.seqs[1:], chosen[1:], strict=True):
            self._detach(slot, 0)
            slot.owner = seq
            seq.slot = slot.id
            seq.status = Status.FORKING

    def reset(self) -> None:
        """Forget every cell (after the running sequences were ended)."""
        self._new_epoch()

    def _best_prefix(self, prompt: list[int]) -> tuple[Slot | None, int]:
        """The longest cached prefix anywhere (idle or running slots), keeping >= 1
        token to prefill so the last prompt position yields logits.

        A parked entry counts only for a prompt that continues it (it is restored
        whole, then taken over), and loses ties to entries in the cache.
        """
        best_slot, best_len = None, 0
        for slot in self.slots:
            length = min(common_prefix(slot.tokens, prompt), len(prompt) - 1)
            if slot.parked is not None:
                if length > best_len and continues(slot, length):
                    best_slot, best_len = slot, length
            elif length > best_len or (length == best_len > 0 and best_slot is not None
                                       and best_slot.parked is not None):
                best_slot, best_len = slot, length
        return best_slot, best_len

    def _cells_needed(self, group: Group) -> int:
        prompt = group.seqs[0].tokens
        slot, reuse = self._best_prefix(prompt)
        return self._cells_for(prompt, slot, reuse,
                               len(group.seqs) * group.request.params.max_new_tokens)

    @staticmethod
    def _cells_for(prompt: list[int], slot: Slot | None, reuse: int, new: int) -> int:
        """Cells an admission writes: the prompt past the reused prefix, the new tokens,
        and a parked entry's cells, which are restored whole before anything reuses
        them (the part past the prefix then goes to the trash)."""
        restored = len(slot.tokens) if slot is not None and slot.parked is not None else 0
        return restored + len(prompt) - reuse + new

    def _new_epoch(self) -> None:
        """Nothing runs: free every cell at once, so allocation restarts at cell 0."""
        self.kv.clear()
        for slot in self.slots:
            if slot.parked is None:
                slot.tokens = []
            slot.cells = []
        self.allocated = 0
        self._trash_low = None
        self._next_repack_check = self.repack_cells
        self.epochs += 1

    def _compact(self) -> None:
        """Nothing has written a cell since the last idle moment: free the trash from its
        lowest cell up, so allocation resumes there and every sequence's new cells
        still land above all the cells it reads.

        Idle prefix-cache entries with cells above that point are cut back to it
        first, but only when at least half of the cells above it are garbage: the
        cache never loses more than the span gains.
        """
        low = self._trash_low
        if low is None:
            return
        cuts: list[tuple[Slot, int]] = []
        kept: set[int] = set()
        for slot in self.slots:
            start = bisect.bisect_left(slot.cells, low)
            if start == len(slot.cells):
                continue
            if slot.owner is not None:
                return  # a new sequence reads these cells: they must stay
            cuts.append((slot, start))
            kept.update(slot.cells[start:])
        if kept and (self.allocated - low) - len(kept) < len(kept):
            return
        for slot, start in cuts:
            self._detach(slot, start)
        self.kv.seq_remove(self.trash, 0, -1)
        self.allocated = low
        self._trash_low = None
        self._next_repack_check = low + self.repack_cells
        self.compactions += 1

    # ---- repacking ------------------------------------------------------------------

    def maybe_repack(self) -> bool:
        """Move every kept sequence's cells down to cell 0 once enough cells above them
        are garbage, without waiting for anything to finish.

        Freed holes cannot be reused in place (the next token would land below the
        cells it follows), but llama.cpp can save a sequence's cells and restore them,
        byte for byte and in the same order, into the lowest free cells. So: save
        every kept sequence, empty the cache, restore them one after another from
        cell 0. Each sequence's cells stay in position order and hold the same bytes,
        so its logits are bitwise what they were; cells shared between sequences
        (a prompt prefix, n > 1 siblings) stay shared. Costs ~1 ms per 1,000 cells;
        attention then scans only live cells instead of everything written since
        the cache was last empty (at 16 sequences, 2,048 dead cells cost ~15%).
        """
        head = self.waiting[0] if self.waiting else None
        if head is not None and len(self.running) + len(head.seqs) > self.max_running:
            head = None  # waiting for a sequence slot, not for cells
        need = self._cells_needed(head) if head is not None else 0
        if head is not None and (self.committed_cells() + need <= self.kv_cells
                                 and self.allocated < self.epoch_cells):
            head = None  # it fits as things are
        if head is None and self.allocated < self._next_repack_check:
            return False
        running = [s for s in self.slots if s.owner is not None and s.cells]
        covered: set[int] = set()
        for slot in running:
            covered.update(slot.cells)
        budget = IDLE_CELLS_RUNNING
        if head is not None:
            # The waiting request needs the room more than idle cache entries do.
            reserved = self.committed_cells() - self.allocated
            budget = min(budget, self.epoch_cells - 1 - len(covered),
                         self.kv_cells - reserved - need - len(covered))
            if budget < 0:
                return False  # even without the idle entries it would not fit
        keep = running + self._idle_to_keep(covered, budget)
        garbage = self.allocated - len(covered)
        if garbage < (1 if head is not None else self.repack_cells):
            if head is None:
                self._next_repack_check = self.allocated + self.repack_cells - garbage
            return False
        self._repack(keep)
        return True

    def _idle_to_keep(self, covered: set[int], budget: int) -> list[Slot]:
        """Idle prefix-cache entries a repack keeps in the cache: most recently used
        first, while the cells they add to `covered` (updated) stay within `budget`.
        The others are parked by `_repack`, within `park_cells`."""
        kept = []
        idle = sorted((s for s in self.slots if s.owner is None and s.cells),
                      key=lambda s: s.last_used, reverse=True)
        for slot in idle:
            extra = [c for c in slot.cells if c not in covered]
            if len(extra) > budget:
                continue
            budget -= len(extra)
            covered.update(extra)
            kept.append(slot)
        return kept

    def migrate(self, switch: Callable[[], None]) -> None:
        """Move the cache into another context (engine/weights.py): `switch` makes
        `self.kv` that context. A repack across contexts: every running sequence's
        cells and the idle entries a repack keeps are saved here and restored there
        from cell 0, byte for byte; the other idle entries are parked."""
        running = [s for s in self.slots if s.owner is not None and s.cells]
        covered: set[int] = set()
        for slot in running:
            covered.update(slot.cells)
        self._repack(running + self._idle_to_keep(covered, IDLE_CELLS_RUNNING), switch)

    def _repack(self, keep: list[Slot], switch: Callable[[], None] | None = None) -> None:
        # Each slot shares the longest run of identical cells with a slot restored
        # before it; only its own tail is saved (staged under `scratch`).
        saved: list[tuple[Slot, Slot | None, int, Any]] = []
        for i, slot in enumerate(keep):
            parent, shared = None, 0
            for prev in keep[:i]:
                if prev.cells[0] == slot.cells[0]:
                    k = common_prefix(slot.cells, prev.cells)
                    if k > shared:
                        parent, shared = prev, k
            if shared == len(slot.cells):
                data = None
            elif shared:
                self.kv.seq_copy(slot.id, self.scratch, shared, -1)
                try:
                    data = self.kv.seq_save(self.scratch)
                finally:
                    self.kv.seq_remove(self.scratch, 0, -1)
            else:
                data = self.kv.seq_save(slot.id)
            saved.append((slot, parent, shared, data))
        kept_ids = {id(s) for s in keep}
        leaving = sorted((s for s in self.slots
                          if s.owner is None and s.cells and id(s) not in kept_ids),
                         key=lambda s: s.last_used, reverse=True)
        for slot in leaving:
            if self._park_room(slot):
                slot.parked = self.kv.seq_save(slot.id)
                self.parks += 1
        # Nothing has changed yet; from here on the cache is rebuilt.
        if switch is not None:
            switch()
        self.kv.clear()
        for slot in leaving:
            slot.cells = []
            if slot.parked is None:  # no room in host memory either: dropped
                slot.tokens = []
        self.allocated = 0
        for slot, parent, shared, data in saved:
            cells = parent.cells[:shared] if parent is not None else []
            if shared:
                self.kv.seq_copy(parent.id, slot.id, 0, shared)
            if data is not None:
                count = len(slot.cells) - shared
                if shared:
                    self.kv.seq_restore(data, self.scratch)
                    self.kv.seq_copy(self.scratch, slot.id, -1, -1)
                    self.kv.seq_remove(self.scratch, 0, -1)
                else:
                    self.kv.seq_restore(data, slot.id)
                cells = cells + list(range(self.allocated, self.allocated + count))
                self.allocated += count
            slot.cells = cells
        self._trash_low = None
        self._next_repack_check = self.allocated + self.repack_cells
        self.repacks += switch is None

    def _park_room(self, entry: Slot) -> bool:
        """Make room to park `entry` by dropping parked entries used less recently than
        it, least recent first; False when even that leaves too little room."""
        parked = sorted((s for s in self.slots if s.parked is not None),
                        key=lambda s: s.last_used)
        total = sum(len(s.tokens) for s in parked)
        older = [s for s in parked if s.last_used < entry.last_used]
        if total - sum(len(s.tokens) for s in older) + len(entry.tokens) > self.park_cells:
            return False
        for slot in older:
            if total + len(entry.tokens) <= self.park_cells:
                break
            total -= len(slot.tokens)
            slot.parked = None
            slot.tokens = []
        return True

    def _unpark(self, slot: Slot) -> None:
        """Restore a parked entry's cells at the allocation cursor, in position order
        and byte for byte (what a repack does), so it can be reused like any other."""
        count = len(slot.tokens)
        self.kv.seq_restore(slot.parked, slot.id)
        slot.parked = None
        slot.cells = list(range(self.allocated, self.allocated + count))
        self.allocated += count
        self.unparks += 1

    def _bind(self, seq: Sequence, slot: Slot, source: Slot | None, reuse: int) -> None:
        """Give `seq` its slot, keeping `reuse` prompt tokens from `source`'s cells.

        A slot that already holds those tokens itself (another request that began the
        same way left them there) keeps them in place: the same entry is given up as
        by a copy into it, without the copy (in streams, a save and restore of the
        whole source entry: ~16 such copies when 16 same-prompt requests arrive).
        """
        if source is slot or (source is not None and reuse > 0 and slot.parked is None
                              and common_prefix(slot.tokens, seq.tokens) >= reuse):
            self._detach(slot, reuse)
        else:
            self._detach(slot, 0)
            if source is not None and reuse > 0:
                self._share(source, slot, reuse)
            else:
                reuse = 0
        slot.owner = seq
        seq.slot = slot.id
        seq.n_cached = reuse
        seq.cached_tokens = reuse
        self.prefix_hit_tokens += reuse

    def _share(self, source: Slot, slot: Slot, count: int) -> None:
        """Give the empty `slot` the first `count` tokens of `source` (in one cell pool a
        copy is a reference: the cells are shared, not duplicated)."""
        self.kv.seq_copy(source.id, slot.id, 0, count)
        slot.tokens = source.tokens[:count]
        slot.cells = source.cells[:count]

    def _detach(self, slot: Slot, start: int) -> None:
        """Drop the slot's tokens from `start` on without freeing their cells (see the
        module docstring): they move to the trash sequence until the epoch ends."""
        if slot.parked is not None:  # no cells to move; restored whole or not at all
            slot.parked = None
            slot.tokens = []
            return
        if len(slot.tokens) > start:
            self.kv.seq_copy(slot.id, self.trash, start, -1)
            self.kv.seq_remove(slot.id, start, -1)
            del slot.tokens[start:]
            if len(slot.cells) > start:
                first = slot.cells[start]
                self._trash_low = first if self._trash_low is None else min(self._trash_low,
                                                                            first)
                del slot.cells[start:]

    # ---- stepping -------------------------------------------------------------------

    def plan(self, draft: Callable[[Sequence, int, int], list[int]] | None = None
             ) -> StepPlan:
        """One token per decoding sequence (plus the tokens `draft(seq, spare, rows)`
        guesses follow it, when given), then prompt chunks within the budget."""
        plan = StepPlan()
        decoding = [s for s in self.running if s.status is Status.DECODE]
        # Rejected guesses leave garbage cells until a repack: guess only while the
        # pool has room for them beside every running sequence's worst case.
        # Guessed rows also stay few enough that the decode rows keep llama.cpp's
        # small-batch kernels (DRAFT_ROWS).
        spare = self._draft_room(len(decoding)) if draft is not None else 0
        rows = len(decoding)
        for seq in decoding:
            guess = draft(seq, spare, rows) if spare > 0 and draft is not None else []
            if guess:
                plan.add_draft(seq, guess)
                spare -= len(guess)
                rows += len(guess)
            else:
                plan.add(seq, 1, sample=True)
        plan.decode_rows = len(decoding)
        budget = self.batch_tokens - len(plan)
        if decoding:
            budget = min(budget, self.prefill_budget)
        for seq in self.running:
            if budget <= 0:
                break
            if seq.status is not Status.PREFILL:
                continue
            count = min(seq.pending, budget)
            spans = seq.group.request.media
            if spans:
                span = span_at(spans, seq.n_cached)
                if span is not None:
                    budget -= self._plan_media(plan, seq, span, budget)
                    continue
                count = min(count, next_span_start(spans, seq.n_cached) - seq.n_cached)
            plan.add(seq, count, sample=count == seq.pending)
            plan.prefill_tokens += count
            budget -= count
        return plan

    def _draft_room(self, decoding: int) -> int:
        """Guessed rows this step may carry: few enough that the decode rows keep
        llama.cpp's small-batch kernels, and cells the pool can spare as garbage."""
        return min(self.kv_cells - self.committed_cells(), DRAFT_ROWS - decoding)

    def _plan_media(self, plan: StepPlan, seq: Sequence, span: MediaSpan, budget: int) -> int:
        """The sequence's prefill has reached a media span: ask for its encoding, or
        take its next rows (one span per step; rows that attend both ways go whole)."""
        if not span.ready:
            plan.awaiting.append(span)
            return 0
        if plan.media is not None:
            return 0
        offset = seq.n_cached - span.start
        count = span.end - seq.n_cached
        if not span.bidirectional:
            count = min(count, budget)
        plan.media = MediaPiece(seq, span, offset, count)
        return count

    def commit(self, plan: StepPlan) -> None:
        """Record that the plan's tokens are now in the KV cache."""
        for seq, count in plan.advanced:
            slot = self.slots[seq.slot]
            guess = plan.drafts.get(seq)
            if guess is None:
                slot.tokens.extend(seq.tokens[seq.n_cached:seq.n_cached + count])
            else:
                slot.tokens += [seq.tokens[seq.n_cached], *guess]
            self._placed(slot, seq, count)
            seq.n_cached += count
            slot.last_used = next(_clock)

    def _placed(self, slot: Slot, seq: Sequence, count: int) -> None:
        # llama.cpp gives a batch's tokens the lowest free cells in batch order, and
        # nothing below `allocated` is free inside an epoch.
        slot.cells.extend(range(self.allocated, self.allocated + count))
        self.allocated += count
        left = self._reserved.get(id(seq))
        if left is not None:
            self._reserved[id(seq)] = max(0, left - count)

    ADOPTS_WHOLE = False  # adopt() takes only the new cells (streams: the whole sequence)

    def adopt(self, seq: Sequence, count: int, data: Any) -> None:
        """Append `count` prompt tokens computed in another context (engine/prompts.py):
        `data` holds their cells, saved there. They are restored at the allocation
        cursor under the scratch id and joined to the slot, as a repack does a tail."""
        slot = self.slots[seq.slot]
        self.kv.seq_restore(data, self.scratch)
        try:
            self.kv.seq_copy(self.scratch, slot.id, -1, -1)
        finally:
            self.kv.seq_remove(self.scratch, 0, -1)
        self._adopted(slot, seq, count)

    def _adopted(self, slot: Slot, seq: Sequence, count: int) -> None:
        slot.tokens.extend(seq.tokens[seq.n_cached:seq.n_cached + count])
        self._placed(slot, seq, count)
        seq.n_cached += count
        slot.last_used = next(_clock)

    def fork(self, leader: Sequence) -> list[Sequence]:
        """After the leader's prompt is cached, siblings share its cells."""
        siblings = [s for s in leader.group.seqs if s.status is Status.FORKING]
        for seq in siblings:
            self._share(self.slots[leader.slot], self.slots[seq.slot], leader.n_cached)
            seq.n_cached = leader.n_cached
            seq.cached_tokens = leader.cached_tokens
        return siblings

    def truncate(self, seq: Sequence) -> None:
        """Drop the cells past `seq.n_cached` (guesses that were not accepted): they
        become garbage, and the sequence may write that many more cells."""
        slot = self.slots[seq.slot]
        dropped = len(slot.tokens) - seq.n_cached
        if dropped > 0:
            self._detach(slot, seq.n_cached)
            if id(seq) in self._reserved:
                self._reserved[id(seq)] += dropped

    def release(self, seq: Sequence) -> None:
        """A finished sequence leaves its slot as a prefix cache entry."""
        if seq.slot >= 0:
            self.truncate(seq)
            slot = self.slots[seq.slot]
            slot.owner = None
            slot.last_used = next(_clock)
            seq.slot = -1
        if seq in self.running:
            self.running.remove(seq)
        self._reserved.pop(id(seq), None)

    def discard(self, seq: Sequence) -> None:
        """Forget a failed sequence's cells (they may be incomplete)."""
        if seq.slot >= 0:
            self._detach(self.slots[seq.slot], 0)
