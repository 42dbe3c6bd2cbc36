"""One record per HTTP request, shared by the layers that each add a fact to it.

The middleware creates it and, once the response is over, turns it into metrics and
an access-log line; auth notes the caller's key tag; the gatekeeper attaches the
rate-limit reservation and the admission ticket; the metered chat service stamps
token timings and counts. Keeping the facts in one place is what lets the middleware
settle the reservation and free the queue slot whatever way the request ended
(finished, refused, or the client gone before the stream even started).

The record travels in ``scope["state"]`` and in a context variable: the streaming
body runs in a task spawned from the request's own, so it sees the same record
without every function in between passing it along.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.requests import Request

    from chatd.api.admission import Ticket
    from chatd.api.metrics import Metrics
    from chatd.api.ratelimit import Reservation

STATE_KEY = "chatd_record"

_current: ContextVar[RequestRecord | None] = ContextVar("chatd_request_record", default=None)


@dataclass(eq=False)
class RequestRecord:
    request_id: str
    method: str = ""
    path: str = ""
    client: str | None = None
    metrics: Metrics | None = None
    started: float = field(default_factory=time.perf_counter)
    status: int | None = None
    completed: bool = False            # the last byte of the body went out
    key: str | None = None             # the API key's tag, once authenticated
    model: str | None = None
    stream: bool | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    queue_wait: float | None = None    # seconds in the admission queue
    first_token: float | None = None   # perf_counter stamps
    last_token: float | None = None
    reservation: Reservation | None = None
    ticket: Ticket | None = None

    def end_generation(self) -> None:
        """Free the queue slot and settle the token reservation; safe to call twice."""
        if self.ticket is not None:
            self.ticket.release()
        if self.reservation is not None:
            self.reservation.settle(self.prompt_tokens + self.completion_tokens)

    def since_start(self, stamp: float | None) -> float | None:
        return None if stamp is None else stamp - self.started


def current_record() -> RequestRecord | None:
    """The record of the request this task is serving, if any."""
    return _current.get()


def bind(record: RequestRecord) -> object:
    """Make ``record`` current for this task (and the tasks it spawns)."""
    return _current.set(record)


def unbind(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


def record_of(request: Request) -> RequestRecord:
    """The request's record; a detached one when no middleware made it (bare apps)."""
    state = request.scope.setdefault("state", {})
    record = state.get(STATE_KEY)
    if record is None:
        record = RequestRecord(request_id="", method=request.method, path=request.url.path)
        state[STATE_KEY] = record
    return record
