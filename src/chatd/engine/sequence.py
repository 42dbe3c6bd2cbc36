"""A request (group) and its n sequences: the state the scheduler moves around."""

from __future__ import annotations

import asyncio
import codecs
import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from chatd.engine.constraint import Constraint
from chatd.engine.sampling import Sampler
from chatd.engine.speculate import NgramDrafter
from chatd.engine.types import FinishReason, GenerationRequest, TokenEvent

_group_ids = itertools.count(1)


class Status(enum.Enum):
    WAITING = "waiting"    # queued, no slot
    PREFILL = "prefill"    # prompt being written into its slot, chunk by chunk
    DENSE = "dense"        # prompt queued for, or being run by, the dense runner (prompts.py)
    FORKING = "forking"    # n > 1 sibling waiting for the leader's prompt
    DECODE = "decode"      # one token per step
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One choice: its slot in the KV cache, its tokens and its sampler."""

    group: Group
    index: int
    sampler: Sampler
    tokens: list[int]          # prompt + generated; tokens[:n_cached] are in the KV cache
    n_prompt: int
    slot: int = -1
    n_cached: int = 0
    status: Status = Status.WAITING
    n_generated: int = 0
    cached_tokens: int = 0     # prompt tokens reused from the prefix cache
    finish_reason: FinishReason | None = None
    constraint: Constraint | None = None
    drafter: NgramDrafter | None = None  # made on its first speculative step
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))

    @property
    def pending(self) -> int:
        """Tokens still to be written into the KV cache before the next sample."""
        return len(self.tokens) - self.n_cached

    @property
    def max_len(self) -> int:
        """The most KV cells this sequence can ever hold."""
        return self.n_prompt + self.group.request.params.max_new_tokens


@dataclass(eq=False)
class Group:
    """A GenerationRequest in flight; its events flow back to one asyncio queue."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[list[TokenEvent]]
    seqs: list[Sequence] = field(default_factory=list)
    id: int = field(default_factory=lambda: next(_group_ids))
    cancelled: set[int] = field(default_factory=set)  # written by the loop thread
    cancel_all: bool = False
    outbox: list[TokenEvent] = field(default_factory=list)

    def take(self) -> list[TokenEvent] | None:
        """This step's events, if they are due now (for a `final_only` request, only
        once every choice has finished)."""
        if self.outbox and (not self.request.final_only or self.done):
            events, self.outbox = self.outbox, []
            return events
        return None

    def flush(self) -> None:
        """Hand the due events to the asyncio side now (see `deliver`)."""
        deliver((self,))

    @property
    def done(self) -> bool:
        return all(s.status is Status.FINISHED for s in self.seqs)


def deliver(groups: Iterable[Group]) -> None:
    """Hand the due events of these groups to their event loops, in one thread-safe
    call per loop: a step wakes the event loop once, not once per request. On two cores
    each wake-up can preempt the engine thread until the loop has written that request's
    chunk, so per-request calls could make a 16-request step wait for up to 16 of them.
    """
    batches: dict[asyncio.AbstractEventLoop, list[tuple[Group, list[TokenEvent]]]] = {}
    for group in groups:
        events = group.take()
        if events is not None:
            batches.setdefault(group.loop, []).append((group, events))
    for loop, items in batches.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the clients' loop is gone: nobody is listening
            for group, _ in items:
                group.cancel_all = True


def _put_all(items: list[tuple[Group, list[TokenEvent]]]) -> None:
    for group, events in items:
        group.queue.put_nowait(events)
