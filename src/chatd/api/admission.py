"""A bounded admission queue in front of the engine.

The engine queues FIFO without bound, so a flood of requests would wait forever. Here
a request enters the engine only while fewer than ``capacity`` sequences (the
engine's ``--max-sequences``) are in flight; others wait in FIFO order, at most
``max_queue`` of them and for at most ``max_wait`` seconds. Past either bound the
answer is 503 ``server_overloaded`` with a ``Retry-After`` estimated from how long
requests have recently held their slot, which the official SDK honours when it retries.
Waiting here, before the response starts, is what lets a stream still be refused
with a proper status instead of an error event inside a 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

from chatd.api.errors import APIError

_EMA_WEIGHT = 0.2
_MAX_RETRY_AFTER = 60.0  # the SDK ignores retry-after above 120 s


@dataclass(eq=False)
class _Waiter:
    weight: int
    future: asyncio.Future[bool]
    since: float


class Ticket:
    """One admitted request's share of the engine; ``release`` is idempotent."""

    def __init__(self, gate: AdmissionGate, weight: int, waited: float) -> None:
        self._gate = gate
        self.weight = weight
        self.waited = waited
        self._granted_at = time.monotonic()
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate._release(self.weight, time.monotonic() - self._granted_at)


class AdmissionRejected(APIError):
    """A 503 from the gate; ``reason`` feeds the rejection metric."""

    def __init__(self, reason: str, message: str, retry_after: float) -> None:
        err = APIError.overloaded(message, retry_after=retry_after)
        super().__init__(err.message, status_code=err.status_code, type=err.type,
                         param=err.param, code=err.code, headers=err.headers)
        self.reason = reason


class AdmissionGate:
    def __init__(self, capacity: int, *, max_queue: int, max_wait: float) -> None:
        self.capacity = capacity
        self.max_queue = max_queue
        self.max_wait = max_wait
        self.in_use = 0
        self._waiters: deque[_Waiter] = deque()
        self._closed = False
        self._avg_hold = 1.0  # seconds a request holds its slot (moving average)

    @property
    def depth(self) -> int:
        """Requests waiting for a slot now."""
        return len(self._waiters)

    async def acquire(self, weight: int = 1) -> Ticket:
        """Wait for ``weight`` sequence slots, or raise ``AdmissionRejected`` (503)."""
        weight = min(max(1, weight), self.capacity)
        if self._closed:
            raise self._shutting_down()
        if not self._waiters and self.in_use + weight <= self.capacity:
            self.in_use += weight
            return Ticket(self, weight, 0.0)
        if len(self._waiters) >= self.max_queue:
            raise AdmissionRejected(
                "queue_full",
                f"The server is busy: {self.in_use} sequences are running and "
                f"{len(self._waiters)} requests are queued (the most allowed). Please retry "
                f"after the delay in the Retry-After header.", self._retry_after(weight))
        waiter = _Waiter(weight, asyncio.get_running_loop().create_future(), time.monotonic())
        self._waiters.append(waiter)
        try:
            await asyncio.wait({waiter.future}, timeout=self.max_wait)
        except BaseException:  # cancelled: the client went away while queued
            self._abandon(waiter)
            raise
        waited = time.monotonic() - waiter.since
        if not waiter.future.done():
            self._abandon(waiter)
            raise AdmissionRejected(
                "queue_timeout",
                f"The server is busy: the request waited {waited:.0f}s for a free slot "
                f"(the limit is {self.max_wait:g}s). Please retry after the delay in the "
                f"Retry-After header.", self._retry_after(weight))
        if not waiter.future.result():
            raise self._shutting_down()
        return Ticket(self, weight, waited)

    def close(self) -> None:
        """Shutdown deadline: refuse everyone still waiting, and every later request."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(False)

    # ---- internals ------------------------------------------------------------------

    def _release(self, weight: int, held: float) -> None:
        self.in_use -= weight
        self._avg_hold += _EMA_WEIGHT * (held - self._avg_hold)
        self._grant()

    def _grant(self) -> None:
        """Admit waiters from the head while they fit; the head is never overtaken."""
        while self._waiters and not self._closed:
            head = self._waiters[0]
            if head.future.done():  # abandoned concurrently
                self._waiters.popleft()
                continue
            if self.in_use + head.weight > self.capacity:
                return
            self._waiters.popleft()
            self.in_use += head.weight
            head.future.set_result(True)

    def _abandon(self, waiter: _Waiter) -> None:
        fut = waiter.future
        if fut.done() and not fut.cancelled() and fut.result():
            self.in_use -= waiter.weight  # granted just as we gave up: hand it on
            self._grant()
            return
        if not fut.done():
            fut.cancel()
        with contextlib.suppress(ValueError):  # already taken off by close()
            self._waiters.remove(waiter)
        self._grant()  # a removed head may unblock smaller requests behind it

    def _retry_after(self, weight: int) -> float:
        """Expected wait for a newcomer: the queued work ahead, spread over the slots."""
        ahead = sum(w.weight for w in self._waiters) + weight
        estimate = self._avg_hold * ahead / self.capacity
        return min(_MAX_RETRY_AFTER, max(1.0, estimate))

    def _shutting_down(self) -> AdmissionRejected:
        return AdmissionRejected("shutting_down",
                                 "The server is shutting down; please retry shortly.", 1.0)
