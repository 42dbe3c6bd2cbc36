"""The generation routes' admission steps (chat and text completions): per-key limits,
then the bounded queue.

Order matters and follows the cost of each check: requests-per-minute before the
prompt is rendered (cheap refusal), tokens-per-minute once the prompt's length is
known, and the queue last, so a request never holds a slot it may not use. A request
the server turns away for overload is not charged to the key; one refused by the
key's own limits is, as OpenAI counts it (retrying in a loop does not help).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from fastapi import Request

from chatd.api.admission import AdmissionGate, AdmissionRejected
from chatd.api.errors import APIError
from chatd.api.metrics import Metrics
from chatd.api.ratelimit import RateLimiter
from chatd.api.tracking import record_of

ANONYMOUS = "anonymous"
"""Bucket shared by every caller of a server without API keys."""


class Asked(Protocol):
    """What the gate reads of a request body (chat or text completion)."""

    model: str
    stream: bool | None


class Admissible(Protocol):
    """What the gate reads of a prepared request (PreparedChat, PreparedCompletion)."""

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def sequences(self) -> int: ...

    @property
    def token_budget(self) -> int: ...


def engine_stopped() -> APIError:
    """503 once the engine thread has died: nothing would ever answer."""
    return APIError("The inference engine has stopped; the server must be restarted.",
                    status_code=503, type="server_error", code="engine_stopped")


class Gatekeeper:
    def __init__(self, limiter: RateLimiter, queue: AdmissionGate, metrics: Metrics, *,
                 auth_enabled: bool, alive: Callable[[], bool] = lambda: True) -> None:
        self.limiter = limiter
        self.queue = queue
        self.metrics = metrics
        self.auth_enabled = auth_enabled
        self.alive = alive

    def bucket_key(self, key: str | None) -> str | None:
        """Whose budget a request spends (None: an unidentified caller on a keyed server)."""
        return key if key is not None else (None if self.auth_enabled else ANONYMOUS)

    def count_request(self, request: Request, body: Asked) -> None:
        """Note what is asked and spend one request of the key's budget (429 if none)."""
        record = record_of(request)
        record.model = body.model
        record.stream = bool(body.stream)
        key = self.bucket_key(record.key) or ANONYMOUS
        try:
            record.reservation = self.limiter.take_request(key)
        except APIError:
            self.metrics.rate_limited.labels("requests").inc()
            raise

    async def admit(self, request: Request, prepared: Admissible) -> None:
        """Reserve prompt + max completion tokens (429), then wait for a slot (503)."""
        record = record_of(request)
        reservation = record.reservation
        if reservation is not None:
            try:
                self.limiter.reserve_tokens(reservation, prepared.token_budget,
                                            prompt_tokens=prepared.prompt_tokens)
            except APIError:
                self.metrics.rate_limited.labels("tokens").inc()
                raise
        if not self.alive():  # it would never answer: refuse now rather than hang
            if reservation is not None:
                reservation.cancel()
            raise engine_stopped()
        try:
            ticket = await self.queue.acquire(prepared.sequences)
        except AdmissionRejected as exc:
            self.metrics.overloaded.labels(exc.reason).inc()
            if reservation is not None:
                reservation.cancel()
            raise
        record.ticket = ticket
        record.queue_wait = ticket.waited
        self.metrics.queue_wait.observe(ticket.waited)

    def close(self) -> None:
        """Shutdown deadline: whoever still waits is refused, and nobody else enters."""
        self.queue.close()
