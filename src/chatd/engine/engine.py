"""The engine: one thread that owns llama.cpp and runs continuous batching.

`generate()` is called on the asyncio loop; it queues the request and returns a
stream. The engine thread wakes, admits queued requests, and runs steps: one
`llama_decode` holding the next token of every running sequence plus chunks of
waiting prompts, then one sample per sequence that produced logits. Events cross
back with `loop.call_soon_threadsafe`, once per request per step. ctypes releases
the GIL during decode, so the HTTP loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from chatd.engine.constraint import GrammarCompiler
from chatd.engine.llama import DecodeError, LlamaModel
from chatd.engine.multimodal import MediaEncoder, MediaSpan, Projector
from chatd.engine.prompts import MIN_TOKENS, PREFIX_RATIO, PromptRunner
from chatd.engine.sampling import Sampler, log_softmax_at, sample_plain, top_ids
from chatd.engine.scheduler import MediaPiece, Scheduler, StepPlan
from chatd.engine.sequence import Group, Sequence, Status, deliver
from chatd.engine.speculate import (
    EXPLORE_DRAFT,
    EXPLORE_RATE,
    MAX_DRAFT,
    SURE_RATE,
    NgramDrafter,
    StepCost,
    any_length_pays,
    best_length,
    verify,
)
from chatd.engine.streams import StreamScheduler
from chatd.engine.types import FinishReason, GenerationRequest, TokenEvent, TokenLogprob
from chatd.engine.weights import WeightSwitch

log = logging.getLogger("chatd.engine")


@dataclass(frozen=True)
class EngineConfig:
    max_running: int = 8        # sequences decoded together
    n_slots: int = 16           # llama.cpp sequence ids: running + prefix cache entries
    ctx_size: int = 8192        # most tokens one sequence may hold
    batch_tokens: int = 512     # tokens in one llama_decode
    prefill_chunk: int = 64     # prompt tokens per step while others decode
    epoch_cells: int = 8192     # cells written before the KV cache is recycled
    park_cells: int | None = None  # idle prefix cache in host memory (None: kv_cells / 4)
    speculate: str = "ngram"    # n-gram drafts (speculate.py) while few sequences decode:
                                # "ngram" as long as they pay, "always" whatever they cost
    speculate_max_running: int = 4  # beyond this, extra rows cost more than they save


def paced(budget: int, steps: float, *, above: float, below: float, floor: int,
          cap: int) -> int:
    """A prompt-token budget after a step that took `steps` decode steps' time: halved
    above `above`, doubled below `below`, within [floor, cap]."""
    if steps > above:
        return max(floor, budget // 2)
    if steps < below:
        return min(cap, budget * 2)
    return budget


class EngineStopped(RuntimeError):
    pass


class GenerationStream:
    """Async iterator over a request's TokenEvents; leaving it early cancels."""

    def __init__(self, engine: Engine, group: Group) -> None:
        self._engine = engine
        self._group = group
        self._buffer: deque[TokenEvent] = deque()
        self._open = len(group.seqs)

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self

    async def __anext__(self) -> TokenEvent:
        while not self._buffer:
            if self._open == 0:
                raise StopAsyncIteration
            try:
                events = await self._group.queue.get()
            except BaseException:
                self.cancel()
                raise
            self._buffer.extend(events)
        event = self._buffer.popleft()
        if event.finish_reason is not None:
            self._open -= 1
        return event

    def cancel(self, index: int | None = None) -> None:
        """Stop one choice (a stop string matched) or all of them (client gone)."""
        if index is None:
            self._group.cancel_all = True
        else:
            self._group.cancelled.add(index)
        self._engine.wake()

    async def aclose(self) -> None:
        if self._open:
            self.cancel()


def _scheduler(model: LlamaModel, config: EngineConfig) -> Scheduler:
    """The KV policy that matches the context's layout: one stream per slot, or one
    pool with two extra sequence ids (the scheduler's trash and scratch)."""
    if not model.settings.kv_unified:
        if model.settings.n_seq_max != config.n_slots or config.ctx_size > model.stream_cells:
            raise ValueError("per-sequence streams need one per slot, each holding ctx_size")
        return StreamScheduler(
            model, n_slots=config.n_slots, stream_cells=model.stream_cells,
            max_running=config.max_running, batch_tokens=config.batch_tokens,
            prefill_chunk=config.prefill_chunk)
    if model.settings.n_seq_max < config.n_slots + 2:
        raise ValueError("the llama.cpp context needs n_seq_max >= n_slots + 2 "
                         "(the scheduler's trash and scratch sequence ids)")
    return Scheduler(
        model, n_slots=config.n_slots, kv_cells=model.kv_cells,
        max_running=config.max_running, batch_tokens=config.batch_tokens,
        prefill_chunk=config.prefill_chunk, epoch_cells=config.epoch_cells,
        park_cells=config.park_cells,
    )


class Engine:
    def __init__(self, model: LlamaModel, config: EngineConfig,
                 projector: Projector | None = None,
                 prompts: PromptRunner | None = None,
                 weights: WeightSwitch | None = None) -> None:
        self.model = model
        self.prompts = prompts  # prefills prompts through dense weights (prompts.py)
        self.weights = weights  # decodes batches through dense weights (weights.py)
        self._dense_budget = config.prefill_chunk  # its tokens per step while others decode
        self.config = config
        self.grammars = GrammarCompiler(model)
        self.scheduler = _scheduler(model, config)
        self._inbox: deque[Group] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._abort_requested = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.tokens_generated = 0
        self.drafted_tokens = 0
        self.accepted_tokens = 0
        self.decode_seconds = 0.0  # inside llama_decode
        self.host_seconds = 0.0    # the rest of each step: planning, sampling, events
        self.step_cost = StepCost()  # what a decode step's rows cost: sizes the drafts
        self._standby = (StepCost(), None)  # the other weights' step cost and step time
        self.projector = projector
        self.encoder = (MediaEncoder(projector, model.n_embd, self.wake)
                        if projector is not None else None)
        self.media_decode_seconds = 0.0
        self._decode_step_s: float | None = None

    # ---- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chatd-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self.encoder is not None:
            self.encoder.stop()
        if self._thread:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def abort_all(self) -> None:
        """End every queued and running request now (shutdown deadline): each stream
        receives its final event instead of being torn."""
        self._abort_requested = True
        self._wake.set()

    # ---- the seam -----------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> GenerationStream:
        """Queue a request; must be called from a running asyncio loop."""
        if self._stopping:
            raise EngineStopped("the engine is shutting down")
        prompt = list(request.prompt_tokens)
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) + request.params.max_new_tokens > min(self.config.ctx_size,
                                                              self.model.kv_cells):
            raise ValueError("prompt plus max_new_tokens exceeds the context size")
        if request.n > self.config.max_running:
            raise ValueError(f"n={request.n} exceeds max running sequences")
        if len(prompt) + request.n * request.params.max_new_tokens > self.model.kv_cells:
            raise ValueError("the prompt plus n x max_new_tokens exceeds the KV cache")
        loop = asyncio.get_running_loop()
        group = Group(request=request, loop=loop, queue=asyncio.Queue())
        banned = () if not request.params.ignore_eos else self.model.eog_ids
        base_seed = request.params.seed
        for i in range(request.n):
            seed = None if base_seed is None else (base_seed + i) & (2**64 - 1)
            sampler = Sampler(request.params, self.model.n_vocab, prompt,
                              seed=seed, banned=banned)
            constraint = (self.grammars.constraint(request.grammar)
                          if request.grammar is not None else None)
            group.seqs.append(Sequence(group=group, index=i, sampler=sampler,
                                       tokens=list(prompt), n_prompt=len(prompt),
                                       constraint=constraint))
        self._inbox.append(group)
        self._wake.set()
        return GenerationStream(self, group)

    def alive(self) -> bool:
        """False once the engine thread has died: every request would wait forever."""
        return self._thread is None or self._thread.is_alive()

    def stats(self) -> dict[str, int | float]:
        running, cached = self.scheduler.cells_in_use()
        return {
            "running_sequences": len(self.scheduler.running),
            "waiting_requests": len(self.scheduler.waiting) + len(self._inbox),
            "kv_cells_total": self.model.kv_cells,
            "kv_cells_running": running,
            "kv_cells_cached": cached,
            "kv_cells_allocated": self.scheduler.scanned_cells(),
            "kv_epochs": self.scheduler.epochs,
            "kv_compactions": self.scheduler.compactions,
            "kv_repacks": self.scheduler.repacks,
            "kv_cells_parked": self.scheduler.parked_cells(),
            "kv_parks": self.scheduler.parks,
            "kv_unparks": self.scheduler.unparks,
            "prefix_cache_hit_tokens": self.scheduler.prefix_hit_tokens,
            "prefix_cache_copied_tokens": self.scheduler.copied_tokens,
            "steps": self.steps,
            "tokens_generated": self.tokens_generated,
            "spec_drafted_tokens": self.drafted_tokens,
            "spec_accepted_tokens": self.accepted_tokens,
            "engine_decode_seconds": round(self.decode_seconds, 6),
            **({"dense_prefill_tokens": self.prompts.tokens,
                "dense_prefill_seconds": round(self.prompts.seconds, 6)}
               if self.prompts is not None else {}),
            **({"dense_decode_now": int(self.weights.dense),
                "dense_decode_steps": self.weights.steps,
                "weights_switches": self.weights.switches,
                "weights_switch_seconds": round(self.weights.seconds, 6)}
               if self.weights is not None else {}),
            "engine_host_seconds": round(self.host_seconds, 6),
            **({"media_encoded": self.encoder.encoded,
                "media_encode_seconds": round(self.encoder.seconds, 6),
                "media_decode_seconds": round(self.media_decode_seconds, 6)}
               if self.encoder is not None else {}),
        }

    # ---- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        sched = self.scheduler
        while not self._stopping:
            began = time.perf_counter()
            while self._inbox:
                sched.add(self._inbox.popleft())
            if self._abort_requested:
                self._abort_requested = False
                for group in [*sched.waiting, *{s.group for s in sched.running}]:
                    group.cancel_all = True
            self._reap_cancelled()
            self._repack()
            admitted = sched.admit()
            if self.weights is not None:
                self._choose_weights()
            for group in admitted:
                if group.cancel_all:  # gave up while queued
                    self._finish_group(group, "abort")
                else:
                    self._route_prompt(group.seqs[0])
            if self.prompts is not None:
                began = self._dense_step(began)
            plan = sched.plan(self._draft if self._speculating() else None)
            for span in plan.awaiting:
                self._encode(span)
            if plan.media is not None:
                self.host_seconds += time.perf_counter() - began
                self._media_step(plan.media)  # counted in media_decode_seconds
                began = time.perf_counter()
            if not plan.tokens:
                if plan.media is None and not self._dense_waiting():
                    # Nothing to run, or waiting for an encode; a batch's weights
                    # move back after a while (weights.py).
                    self._wake.wait(self.weights.waits() if self.weights else None)
                    self._wake.clear()
                continue
            started = time.perf_counter()
            self.host_seconds += started - began
            try:
                self.model.decode(plan.tokens, plan.positions, plan.seq_ids, plan.logits)
            except DecodeError as exc:
                log.error("decode failed (%s); failing the batch's requests", exc)
                self._fail_plan(plan, str(exc))
                continue
            decoded = time.perf_counter()
            self._pace_prefill(plan, decoded - started)
            if not plan.prefill_tokens:
                self.step_cost.observe(len(plan), decoded - started)
            self.steps += 1
            if self.weights is not None and self.weights.dense:
                self.weights.steps += 1
            sched.commit(plan)
            self._sample(plan, decoded)
            deliver({seq.group for seq, _ in plan.advanced})
            self.decode_seconds += decoded - started
            self.host_seconds += time.perf_counter() - decoded
        # Shutting down: nobody may wait forever on a stream.
        running = list(sched.running)
        for seq in running:
            self._finish(seq, "abort")
        for group in {seq.group for seq in running}:
            group.flush()
        while sched.waiting or self._inbox:
            group = sched.waiting.popleft() if sched.waiting else self._inbox.popleft()
            self._finish_group(group, "abort")

    def _encode(self, span: MediaSpan) -> None:
        if self.encoder is not None:
            self.encoder.submit(span)
        else:  # cannot happen: the chat layer refuses media without a projector
            span.error = "this server has no projector for media input"
            span.done.set()

    def _media_step(self, piece: MediaPiece) -> None:
        """Decode a media span's next rows for one sequence, in a call of their own."""
        seq, span = piece.seq, piece.span
        if span.error is not None or span.embd is None:
            self._finish_group(seq.group, "error",
                               f"the {span.kind} could not be encoded: {span.error}")
            return
        last = seq.n_cached + piece.count == len(seq.tokens)
        sub = StepPlan()
        sub.add(seq, piece.count, sample=last)
        started = time.perf_counter()
        try:
            self.model.decode_embeddings(span.embd[piece.offset:piece.offset + piece.count],
                                         seq.n_cached, seq.slot, want_last_logits=last,
                                         causal=not span.bidirectional)
        except DecodeError as exc:
            log.error("decoding %s rows failed (%s)", span.kind, exc)
            self._fail_plan(sub, str(exc))
            return
        decoded = time.perf_counter()
        self.media_decode_seconds += decoded - started
        self.scheduler.commit(sub)
        if last:
            self._sample(sub, decoded)
        seq.group.flush()

    # ---- prompts through dense weights (prompts.py) -----------------------------------

    def _route_prompt(self, seq: Sequence) -> None:
        """Send an admitted prompt to the dense runner when it has enough new tokens
        to pay for copying its cached prefix there and the new cells back. Also while
        the copy decodes batches: in the runner a prompt's rows attend only to its own
        cells, in a step to every cell of the pool (8 streams and a ~2,100-token prompt,
        benchmarks.scenarios: its first token after 14.4 s riding in the steps)."""
        if self.prompts is None or self.prompts.broken or seq.group.request.media:
            return
        new = seq.pending - 1  # the last prompt token runs on the served weights
        if new >= MIN_TOKENS and new * PREFIX_RATIO >= seq.n_cached:
            seq.status = Status.DENSE

    def _dense_waiting(self) -> bool:
        return any(s.status is Status.DENSE for s in self.scheduler.running)

    def _dense_step(self, began: float) -> float:
        """One chunk of the oldest dense prompt; when it is all in, its cells join the
        sequence's slot and its last token waits for the next step. Returns the new
        start of host time (the chunk is counted in `dense_prefill_seconds`)."""
        runner = self.prompts
        assert runner is not None
        seq = runner.seq
        if seq is not None and seq.status is not Status.DENSE:
            runner.drop()  # cancelled meanwhile
            seq = None
        fresh = seq is None
        if seq is None:
            seq = next((s for s in self.scheduler.running if s.status is Status.DENSE), None)
            if seq is None:
                return began
        decoding = any(s.status is Status.DECODE for s in self.scheduler.running)
        budget = self._dense_budget if decoding else runner.batch_tokens
        self.host_seconds += time.perf_counter() - began
        started = time.perf_counter()
        try:
            if fresh:  # its cached prefix, if any, is copied in: prompt rows attend to it
                runner.begin(seq, self.model.seq_save(seq.slot) if seq.n_cached else None)
            count = runner.end - seq.n_cached
            finished = runner.advance(budget)
            data = runner.cells(whole=self.scheduler.ADOPTS_WHOLE) if finished else None
        except Exception:
            # The dense context failed (a llama.cpp error): nothing has touched the
            # served cache yet, so this prompt goes through the served weights instead.
            log.exception("dense prefill failed; prefilling on the served weights")
            runner.drop()
            seq.status = Status.PREFILL
            return time.perf_counter()
        elapsed = time.perf_counter() - started
        runner.seconds += elapsed
        if decoding and self._decode_step_s is not None:
            # The chunk runs between two decode steps, so the other streams' gap is a
            # step plus the chunk: keep the chunk near one step, and the gap within ~2x
            # a step, as _pace_prefill keeps a mixed step.
            self._dense_budget = paced(self._dense_budget, elapsed / self._decode_step_s,
                                       above=1.2, below=0.6, floor=MIN_TOKENS,
                                       cap=runner.batch_tokens)
        if data is not None:
            runner.drop()
            try:
                self.scheduler.adopt(seq, count, data)
            except Exception:
                # The served cache refused the cells (a restore may already have
                # emptied the sequence's stream): this request fails, and later
                # prompts stay on the served weights.
                log.exception("moving a dense prefill's cells failed; dense prefill is off")
                runner.broken = True
                self.scheduler.discard(seq)
                self._finish_group(seq.group, "error", "internal error while prefilling")
                return time.perf_counter()
            seq.status = Status.PREFILL
        return time.perf_counter()

    # ---- batches through dense weights (weights.py) -----------------------------------

    def _choose_weights(self) -> None:
        sched = self.scheduler
        assert self.weights is not None
        sequences = len(sched.running) + sum(len(g.seqs) for g in sched.waiting)
        long_prefill = any(s.status is Status.PREFILL and s.pending > MIN_TOKENS
                           for s in sched.running)
        if self.weights.wanted(sequences, long_prefill, time.perf_counter()) != \
                self.weights.dense:
            self._switch_weights()

    def _switch_weights(self) -> None:
        """Move the KV cache into the other weights' context and decode there."""
        switch = self.weights
        assert switch is not None
        started = time.perf_counter()
        try:
            self.scheduler.migrate(lambda: self.model.swap_context(switch.context))
        except Exception:
            # A llama.cpp state call failed: the cache may be half moved, so the running
            # requests cannot go on, and later steps stay on the file's weights.
            log.exception("moving the KV cache between weights failed; batches stay on "
                          "the file's weights")
            if switch.dense:  # the model holds the copy's context now
                self.model.swap_context(switch.context)
            switch.broken = True
            self.scheduler.reset()  # forgets every cell, so ending requests touches none
            for group in {seq.group for seq in self.scheduler.running}:
                self._finish_group(group, "error", "internal error while moving the KV cache")
            return
        switch.switches += 1
        switch.seconds += time.perf_counter() - started
        # Speculation's cost line and the pacing step time belong to the weights.
        standby = (self.step_cost, self._decode_step_s)
        self.step_cost, self._decode_step_s = self._standby
        self._standby = standby

    def _repack(self) -> None:
        try:
            self.scheduler.maybe_repack()
        except Exception:
            # Only a llama.cpp state call failing gets here; the cache may be half
            # rebuilt, so the running requests cannot go on.
            log.exception("repacking the KV cache failed; failing the running requests")
            for group in {seq.group for seq in self.scheduler.running}:
                self._finish_group(group, "error", "internal error while repacking the KV cache")
            self.scheduler.reset()

    def _pace_prefill(self, plan: StepPlan, seconds: float) -> None:
        """Keep steps that carry prompt chunks within ~2x a decode-only step.

        A prompt row attends to every earlier prompt token, so 64 rows at position
        2,000 cost ~20x more than at position 100; a fixed chunk would freeze the
        other streams exactly when prompts are long.
        """
        if not plan.decode_rows:
            return
        sched = self.scheduler
        if not plan.prefill_tokens:
            self._decode_step_s = (seconds if self._decode_step_s is None
                                   else 0.8 * self._decode_step_s + 0.2 * seconds)
        elif self._decode_step_s is not None:
            sched.prefill_budget = paced(sched.prefill_budget, seconds / self._decode_step_s,
                                         above=2.0, below=1.5, floor=1,
                                         cap=self.config.prefill_chunk)

    def _speculating(self) -> bool:
        if self.config.speculate not in ("ngram", "always"):
            return False
        decoding = sum(1 for s in self.scheduler.running if s.status is Status.DECODE)
        # With a KV stream per sequence llama.cpp gives every sequence the same number
        # of rows in a micro-batch, so a guessed row beside other sequences goes in a
        # pass over the weights of its own, which the step cost line does not see
        # (measured at c=4: 0.89x of speculation off). Only a lone sequence drafts.
        limit = self.config.speculate_max_running if self.model.settings.kv_unified else 1
        return 0 < decoding <= limit

    def _draft(self, seq: Sequence, spare: int, rows: int) -> list[int]:
        """Guessed tokens after the sequence's next one, as many as pay for their rows
        in a step that already has `rows`; never past the sequence's token limit or
        the context, nor more than the KV pool can take as garbage."""
        params = seq.group.request.params
        room = min(spare, MAX_DRAFT, params.max_new_tokens - seq.n_generated - 1,
                   self.config.ctx_size - len(seq.tokens) - 1)
        if room <= 0:
            return []
        line = self.step_cost.line()
        always = self.config.speculate == "always"
        # A short draft now and then measures what nothing else would: how often this
        # sequence's guesses are right (its first draft) and what rows cost when the
        # cost line rests on old steps (StepCost.stale).
        drafter = seq.drafter
        explore = not always and (drafter is None or not drafter.tried or (
            self.step_cost.stale() and drafter.rate >= EXPLORE_RATE))
        if not (always or explore) and not any_length_pays(room, rows, rows - 1, line):
            return []  # not even a sure guess pays for its row: skip the lookup
        if seq.drafter is None:
            seq.drafter = NgramDrafter(seq.tokens)
        guess = seq.drafter.draft(room)
        if always or not guess:
            return guess
        if explore:
            return guess[:EXPLORE_DRAFT]
        if seq.drafter.rate >= SURE_RATE:
            return guess
        return guess[:best_length(seq.drafter.rate, len(guess), rows, rows - 1, line)]

    def _verify(self, seq: Sequence, first_row: int, draft: list[int], at: float) -> None:
        """Sample the drafted rows in order, as if one at a time, up to the first token
        that differs from the guess; the cells of the guesses after it are dropped."""
        model = self.model
        base = seq.n_cached - len(draft)  # the next token's cell is certainly valid

        def emit(i: int) -> int | None:
            seq.n_cached = base + i  # ... and so are the i guesses accepted so far
            self._emit_token(seq, model.logits_row(first_row + i), at)
            return None if seq.status is Status.FINISHED else seq.tokens[-1]

        accepted = verify(draft, emit)
        if seq.status is not Status.FINISHED:
            self.scheduler.truncate(seq)
        self.drafted_tokens += len(draft)
        self.accepted_tokens += accepted
        assert seq.drafter is not None
        seq.drafter.feedback(len(draft), accepted)

    def _sample_plain(self, plan: StepPlan) -> dict[Sequence, int]:
        """Tokens for the step's plain decode rows (no grammar, draft, penalty, bias or
        truncation), sampled together; the other rows are sampled one by one."""
        plain = [(seq, row) for seq, row in plan.samplers
                 if seq.status is Status.DECODE and seq.sampler.plain
                 and seq.constraint is None and seq not in plan.drafts]
        if len(plain) < 2:
            return {}
        try:
            rows = self.model.logits_rows([row for _, row in plain])
            tokens = sample_plain([seq.sampler for seq, _ in plain], rows)
        except Exception:
            log.exception("batched sampling failed; sampling the rows one by one")
            return {}
        return {seq: token for (seq, _), token in zip(plain, tokens, strict=True)}

    def _sample(self, plan: StepPlan, at: float) -> None:
        model = self.model
        picked = self._sample_plain(plan)
        for seq, row_index in plan.samplers:
            if seq.status is Status.FINISHED:  # a sibling's failure ended its group
                continue
            draft = plan.drafts.get(seq)
            try:
                if draft is not None:
                    self._verify(seq, row_index, draft, at)
                    continue
                row = model.logits_row(row_index)
                if seq.status is Status.PREFILL:
                    seq.status = Status.DECODE
                    siblings = self.scheduler.fork(seq) if len(seq.group.seqs) > 1 else []
                    for sib in siblings:
                        sib.status = Status.DECODE
                        self._emit_token(sib, row, at)
                self._emit_token(seq, row, at, picked.get(seq))
            except Exception:
                # A bug in one request's sampling must not take the engine down with it.
                log.exception("sampling failed for request %d", seq.group.id)
                self._finish_group(seq.group, "error", "internal error while sampling")

    def _emit_token(self, seq: Sequence, row: np.ndarray, at: float,
                    token: int | None = None) -> None:
        """Append the sequence's next token (sampled from `row` unless already picked)."""
        params = seq.group.request.params
        constraint = seq.constraint
        if token is None:
            token = seq.sampler.sample(row, constraint.disallowed() if constraint else None)
        seq.sampler.accept(token)
        seq.tokens.append(token)
        seq.n_generated += 1
        self.tokens_generated += 1
        finish: FinishReason | None = None
        if constraint is not None and not constraint.accept(token):
            log.error("grammar rejected token %d: %s", token, constraint.error)
            self._finish(seq, "error", "the output grammar could not be satisfied")
            return
        if token in self.model.eog_ids and not params.ignore_eos:
            finish = "stop"
            text = seq.decoder.decode(b"", final=True)
        else:
            text = seq.decoder.decode(self.model.token_bytes[token])
            if constraint is not None and constraint.finished:
                finish = "stop"  # the grammar is complete: nothing may follow
                text += seq.decoder.decode(b"", final=True)
            elif (seq.n_generated >= params.max_new_tokens
                  or len(seq.tokens) >= self.config.ctx_size):
                finish = "length"
                text += seq.decoder.decode(b"", final=True)
        event = TokenEvent(index=seq.index, token_id=token, text=text,
                           prompt_tokens=seq.n_prompt, cached_tokens=seq.cached_tokens, at=at)
        if params.logprobs and finish != "stop":
            self._add_logprobs(event, row, token, params.top_logprobs)
        seq.group.outbox.append(event)
        if finish:
            event.finish_reason = finish
            seq.finish_reason = finish
            seq.status = Status.FINISHED
            self.scheduler.release(seq)

    def _add_logprobs(self, event: TokenEvent, row: np.ndarray, token: int, top_n: int) -> None:
        ids = np.array([token], dtype=np.int64)
        if top_n:
            ids = np.concatenate([ids, top_ids(row, top_n)])
        values = log_softmax_at(row, ids)
        model = self.model
        event.logprob = TokenLogprob(token, model.token_display[token], float(values[0]))
        if top_n:
            event.top_logprobs = [
                TokenLogprob(int(t), model.token_display[int(t)], float(v))
                for t, v in zip(ids[1:], values[1:], strict=True)
            ]
        else:
            event.top_logprobs = []

    # ---- ending sequences -------------------------------------------------------------

    def _reap_cancelled(self) -> None:
        sched = self.scheduler
        if any(g.cancel_all for g in sched.waiting):
            for group in [g for g in sched.waiting if g.cancel_all]:
                sched.waiting.remove(group)
                self._finish_group(group, "abort")
        for seq in list(sched.running):
            group = seq.group
            if group.cancel_all or seq.index in group.cancelled:
                self._finish(seq, "abort")
                group.flush()

    def _finish(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> None:
        if seq.status is Status.FINISHED:
            return
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        self.scheduler.release(seq)
        seq.group.outbox.append(TokenEvent(
            index=seq.index, token_id=-1, text=seq.decoder.decode(b"", final=True),
            finish_reason=reason, prompt_tokens=seq.n_prompt,
            cached_tokens=seq.cached_tokens, error=error, at=time.perf_counter()))

    def _finish_group(self, group: Group, reason: FinishReason, error: str | None = None) -> None:
        for seq in group.seqs:
            self._finish(seq, reason, error)
        group.flush()

    def _fail_plan(self, plan: StepPlan, message: str) -> None:
        groups = {seq.group for seq, _ in plan.advanced}
        for group in groups:
            for seq in group.seqs:
                self.scheduler.discard(seq)
            self._finish_group(group, "error", message)
