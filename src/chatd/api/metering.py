"""The chat service, plus the timings and counts the HTTP layer reports.

A subclass rather than code in the routes: ``run`` and ``run_completion`` are where
the first and every later token become visible for JSON and SSE responses alike,
of chat and text completions, so TTFT, inter-token latency and token counts are
taken in one place. The request's record is found through the context variable the
middleware set (see ``tracking``). The queue slot is given back as soon as
generation ends, before the last bytes reach a slow client.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

from chatd.api.tracking import RequestRecord, current_record
from chatd.chat.completion import CompletionDelta, PreparedCompletion
from chatd.chat.service import ChatService, ChoiceDelta, PreparedChat, UsageCount


class _Timed(Protocol):
    """What metering reads of a delta: whose it is and when the engine made its tokens."""

    @property
    def index(self) -> int: ...

    @property
    def at(self) -> float: ...

    @property
    def held(self) -> tuple[float, ...]: ...


D = TypeVar("D", bound=_Timed)


class MeteredChatService(ChatService):
    def run(self, prepared: PreparedChat, usage: UsageCount, **options: Any
            ) -> AsyncIterator[ChoiceDelta]:
        return _metered(super().run(prepared, usage, **options), usage)

    def run_completion(self, prepared: PreparedCompletion, usage: UsageCount,
                       **options: Any) -> AsyncIterator[CompletionDelta]:
        return _metered(super().run_completion(prepared, usage, **options), usage)


async def _metered(source: AsyncIterator[D], usage: UsageCount) -> AsyncIterator[D]:
    """Pass `source` through, stamping the request's record and the metrics."""
    record = current_record()
    if record is None:  # not serving an HTTP request (tests, tools)
        async with contextlib.aclosing(source) as deltas:
            async for delta in deltas:
                yield delta
        return
    metrics = record.metrics
    last: dict[int, float] = {}
    finished = False
    try:
        async with contextlib.aclosing(source) as deltas:
            async for delta in deltas:
                # The engine's time: a non-streaming request's tokens arrive at once.
                now = delta.at or time.perf_counter()
                for at in delta.held:  # tokens whose text came out only with this one
                    _stamp(record, last, delta.index, at)
                _stamp(record, last, delta.index, now)
                yield delta
        finished = True
    finally:
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
        record.cached_tokens = usage.cached_tokens
        if metrics:
            metrics.prompt_tokens.inc(usage.prompt_tokens)
            metrics.completion_tokens.inc(usage.completion_tokens)
            if finished and record.last_token is not None:
                metrics.e2e.observe(record.last_token - record.started)
        record.end_generation()


def _stamp(record: RequestRecord, last: dict[int, float], index: int, at: float) -> None:
    """One token of choice `index`, made at `at`: TTFT for the request's first, else a gap."""
    metrics = record.metrics
    previous = last.get(index)
    if record.first_token is None:
        record.first_token = at
        if metrics:
            metrics.ttft.observe(at - record.started)
    elif previous is not None and metrics:
        metrics.itl.observe(at - previous)
    last[index] = record.last_token = at
