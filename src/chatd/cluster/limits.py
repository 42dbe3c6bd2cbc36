"""Per-key rate limits that hold for the whole deployment, not once per replica.

One small shared actor (chatd.cluster.actors) holds every key's token buckets; each
replica's `RateLimiter` keeps chatd's own admission logic and error messages but takes
from and gives back to those shared buckets. Taking is a synchronous call (about a
millisecond on one machine; it runs on the replica's user-code thread, not on the
engine's): a limit checked against a local copy would let a burst through N times.
Giving back (settling a reservation) is fire-and-forget. If the actor cannot be
reached the request is let through and the failure is logged: limits are a policy,
losing them must not take the API down.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import ray

from chatd.api.ratelimit import RateLimiter, TokenBucket, _KeyBuckets
from chatd.cluster.actors import CALL_TIMEOUT_S, shared_actor

log = logging.getLogger("chatd.cluster")


class _Buckets:
    """The shared state: token buckets by (key, kind), as in one chatd process."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.capacity = {"requests": rpm, "tokens": tpm}
        self.buckets: dict[tuple[str, str], TokenBucket] = {}

    def _bucket(self, key: str, kind: str) -> TokenBucket:
        bucket = self.buckets.get((key, kind))
        if bucket is None:
            capacity = self.capacity[kind]
            assert capacity is not None
            bucket = self.buckets[(key, kind)] = TokenBucket(capacity, time.monotonic)
        return bucket

    def take(self, key: str, kind: str, amount: float) -> tuple[float, float, float]:
        """(seconds to wait or 0, level after, seconds until full)."""
        bucket = self._bucket(key, kind)
        wait = bucket.take(amount)
        return wait, bucket._refill(), bucket.reset_in()

    def give(self, key: str, kind: str, amount: float) -> None:
        self._bucket(key, kind).give(amount)


def limits_actor(name: str, rpm: int | None, tpm: int | None) -> Any:
    """The deployment's shared limits actor, created by whichever replica comes first."""
    return shared_actor(_Buckets, name, rpm, tpm)


class SharedBucket:
    """A `TokenBucket` whose level lives in the limits actor (same interface)."""

    def __init__(self, actor: Any, key: str, kind: str, capacity: int) -> None:
        self.actor = actor
        self.key = key
        self.kind = kind
        self.capacity = capacity
        self.rate = capacity / 60.0
        self._level = float(capacity)  # last level seen, for the x-ratelimit-* headers
        self._stamp = time.monotonic()

    def _seen(self) -> float:
        elapsed = time.monotonic() - self._stamp
        return min(self.capacity, self._level + elapsed * self.rate)

    def take(self, amount: float) -> float:
        try:
            wait, level, _ = ray.get(self.actor.take.remote(self.key, self.kind, amount),
                                     timeout=CALL_TIMEOUT_S)
        except Exception as exc:
            log.warning("shared rate limits unreachable, letting the request through: %r",
                        exc)
            return 0.0
        self._level, self._stamp = level, time.monotonic()
        return wait

    def give(self, amount: float) -> None:
        self.actor.give.remote(self.key, self.kind, amount)
        self._level = min(self.capacity, self._seen() + amount)
        self._stamp = time.monotonic()

    def remaining(self) -> int:
        return max(0, math.floor(self._seen()))

    def reset_in(self) -> float:
        return (self.capacity - self._seen()) / self.rate


class SharedRateLimiter(RateLimiter):
    """chatd's `RateLimiter`, its buckets shared by every replica of the deployment."""

    def __init__(self, actor_name: str, requests_per_minute: int | None,
                 tokens_per_minute: int | None) -> None:
        super().__init__(requests_per_minute, tokens_per_minute)
        self.actor = limits_actor(actor_name, requests_per_minute, tokens_per_minute)

    def _buckets(self, key: str) -> _KeyBuckets:
        buckets = self._keys.get(key)
        if buckets is None:
            buckets = _KeyBuckets(
                SharedBucket(self.actor, key, "requests", self.rpm)  # type: ignore[arg-type]
                if self.rpm is not None else None,
                SharedBucket(self.actor, key, "tokens", self.tpm)  # type: ignore[arg-type]
                if self.tpm is not None else None)
            self._keys[key] = buckets
        return buckets
