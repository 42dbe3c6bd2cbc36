"""Per-key rate limits as token buckets, and OpenAI's ``x-ratelimit-*`` headers.

Two buckets per API key: requests per minute and tokens per minute. Each holds up to
its per-minute limit and refills continuously (limit/60 per second), so a client that
stays under the limit is never refused and a burst is paid back smoothly rather than
at a minute boundary. Tokens are reserved at admission (prompt + the most the
completion may use) and settled with the real count when the request ends, which is
how OpenAI accounts them: a request cannot overshoot the limit while it is running.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from chatd.api.errors import APIError

Clock = Callable[[], float]


class TokenBucket:
    """``capacity`` units, refilled at ``capacity / period`` per second."""

    def __init__(self, capacity: int, clock: Clock, period: float = 60.0) -> None:
        self.capacity = capacity
        self.rate = capacity / period
        self._clock = clock
        self._level = float(capacity)
        self._stamp = clock()

    def _refill(self) -> float:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now
        return self._level

    def take(self, amount: float) -> float:
        """Take ``amount`` and return 0, or take nothing and return seconds to wait."""
        level = self._refill()
        if amount <= level:
            self._level = level - amount
            return 0.0
        return (amount - level) / self.rate

    def give(self, amount: float) -> None:
        """Return unused units (a settled or cancelled reservation)."""
        self._level = min(self.capacity, self._refill() + amount)

    def remaining(self) -> int:
        return max(0, math.floor(self._refill()))

    def reset_in(self) -> float:
        """Seconds until the bucket is full again (OpenAI's "reset")."""
        return (self.capacity - self._refill()) / self.rate


def go_duration(seconds: float) -> str:
    """OpenAI's reset format, Go's Duration.String: ``12ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    seconds = round(seconds, 3)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


@dataclass
class _KeyBuckets:
    requests: TokenBucket | None
    tokens: TokenBucket | None


class Reservation:
    """What one request took from its key's buckets; settled or cancelled exactly once."""

    def __init__(self, buckets: _KeyBuckets) -> None:
        self.buckets = buckets
        self.request_taken = False
        self.tokens_reserved = 0
        self._closed = False

    def settle(self, used_tokens: int) -> None:
        """The request ended: give back what was reserved but not used."""
        if self._closed:
            return
        self._closed = True
        if self.buckets.tokens is not None and self.tokens_reserved > used_tokens:
            self.buckets.tokens.give(self.tokens_reserved - used_tokens)

    def cancel(self) -> None:
        """The server turned the request away (overload): nothing is charged."""
        if self._closed:
            return
        self._closed = True
        if self.buckets.requests is not None and self.request_taken:
            self.buckets.requests.give(1)
        if self.buckets.tokens is not None and self.tokens_reserved:
            self.buckets.tokens.give(self.tokens_reserved)


class RateLimiter:
    """Buckets per key (by key tag). ``None`` limits mean unlimited: no bucket, no header.

    Keys are the configured ones (or one shared anonymous key on an open server), so
    the number of bucket pairs is bounded by the configuration.
    """

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None,
                 clock: Clock = time.monotonic) -> None:
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._clock = clock
        self._keys: dict[str, _KeyBuckets] = {}

    @property
    def enabled(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def _buckets(self, key: str) -> _KeyBuckets:
        buckets = self._keys.get(key)
        if buckets is None:
            buckets = _KeyBuckets(
                TokenBucket(self.rpm, self._clock) if self.rpm is not None else None,
                TokenBucket(self.tpm, self._clock) if self.tpm is not None else None)
            self._keys[key] = buckets
        return buckets

    def take_request(self, key: str) -> Reservation:
        """Count one request against ``key``'s requests-per-minute, or raise 429."""
        buckets = self._buckets(key)
        reservation = Reservation(buckets)
        if buckets.requests is not None:
            wait = buckets.requests.take(1)
            if wait:
                raise APIError.rate_limited(
                    f"Rate limit reached for requests per minute (RPM) on this API key: "
                    f"limit {self.rpm}, remaining 0, requested 1. The limit resets in "
                    f"{go_duration(buckets.requests.reset_in())}; please try again in "
                    f"{go_duration(wait)}.", retry_after=wait, type="requests")
            reservation.request_taken = True
        return reservation

    def reserve_tokens(self, reservation: Reservation, amount: int, *,
                       prompt_tokens: int) -> None:
        """Reserve ``amount`` tokens (prompt + max completion) or raise 429.

        A request larger than the whole per-minute budget can never pass: it is told so
        with ``x-should-retry: false`` (the official SDK then does not retry).
        """
        bucket = reservation.buckets.tokens
        if bucket is None:
            return
        if amount > bucket.capacity:
            err = APIError.rate_limited(
                f"Request too large for tokens per minute (TPM) on this API key: limit "
                f"{self.tpm}, requested {amount} ({prompt_tokens} prompt tokens plus the "
                f"most the completion may use). Lower max_completion_tokens (or max_tokens) "
                f"or shorten the messages.", type="tokens")
            err.headers["x-should-retry"] = "false"
            raise err
        wait = bucket.take(amount)
        if wait:
            raise APIError.rate_limited(
                f"Rate limit reached for tokens per minute (TPM) on this API key: limit "
                f"{self.tpm}, remaining {bucket.remaining()}, requested {amount}. The limit "
                f"resets in {go_duration(bucket.reset_in())}; please try again in "
                f"{go_duration(wait)}.", retry_after=wait, type="tokens")
        reservation.tokens_reserved = amount

    def headers(self, key: str | None) -> list[tuple[bytes, bytes]]:
        """The six ``x-ratelimit-*`` headers for ``key`` (a fresh budget when ``None``:
        the caller is not identified), leaving out the trio of a disabled limit."""
        if not self.enabled:
            return []
        buckets = self._buckets(key) if key is not None else None
        out: list[tuple[bytes, bytes]] = []
        for name, limit, bucket in (
                ("requests", self.rpm, buckets.requests if buckets else None),
                ("tokens", self.tpm, buckets.tokens if buckets else None)):
            if limit is None:
                continue
            remaining = bucket.remaining() if bucket else limit
            reset = go_duration(bucket.reset_in()) if bucket else "0s"
            out += [(f"x-ratelimit-limit-{name}".encode(), str(limit).encode()),
                    (f"x-ratelimit-remaining-{name}".encode(), str(remaining).encode()),
                    (f"x-ratelimit-reset-{name}".encode(), reset.encode())]
        return out
