"""Serve request router: a session's requests go to the replica that holds its prefix.

A session's first request goes to the replica with the fewest requests in flight
from this router (ties: rendezvous hashing, each key ranking the replicas by
hash(key, replica id)), and the session then lives there: its later requests prefer
that replica, whose KV cache holds the conversation. Placing new sessions by load
rather than by hash alone keeps replicas evenly busy when there are few sessions at
a time (8 chats over 2 replicas by hash alone split 4/4 only a quarter of the time).
When the home replica is saturated (Serve's `max_ongoing_requests` reached), the next
rank is every other replica and Serve's own queue-length probes pick the least
loaded; when it is gone, the session is placed again. Requests without a key go to
the least loaded replica.

The homes live in this router (one per ingress replica; chatd deploys one ingress),
so with several ingress replicas a session keeps its replica only while its requests
come through the same one.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

if TYPE_CHECKING:  # Serve's hooks name it; only its unique_id is read here
    from ray.serve._private.common import ReplicaID

SESSION_KWARG = "session"
"""The keyword argument of the engine call that carries the session key."""

MAX_SESSIONS = 65536
"""Homes remembered, least recently used forgotten first (~100 bytes each)."""


def _score(key: str, replica: RunningReplica) -> bytes:
    token = f"{key}\0{replica.replica_id.unique_id}".encode()
    return hashlib.blake2b(token, digest_size=8).digest()


def rank(key: str, replicas: list[RunningReplica]) -> list[RunningReplica]:
    """Replicas in the order this key prefers them (highest random weight first)."""
    return sorted(replicas, key=lambda r: _score(key, r), reverse=True)


class SessionHomes:
    """Which replica each session lives on, and each replica's requests in flight."""

    def __init__(self, capacity: int = MAX_SESSIONS) -> None:
        self._homes: OrderedDict[str, str] = OrderedDict()
        self._capacity = capacity
        self.in_flight: Counter[str] = Counter()

    def choose(self, key: str, replicas: list[RunningReplica]) -> list[list[RunningReplica]]:
        """Ranks for a request of session `key`: its home, then every other replica."""
        by_id = {r.replica_id.unique_id: r for r in replicas}
        home = by_id.get(self._homes.get(key, ""))
        if home is None:
            ranked = rank(key, replicas)
            home = min(ranked, key=lambda r: self.in_flight[r.replica_id.unique_id])
        self._homes[key] = home.replica_id.unique_id
        self._homes.move_to_end(key)
        while len(self._homes) > self._capacity:
            self._homes.popitem(last=False)
        return [[home], [r for r in replicas if r is not home]]

    def moved(self, key: str, replica_id: str) -> None:
        """The request went to another replica (its home was saturated): live there."""
        if key in self._homes:
            self._homes[key] = replica_id


class SessionAffinityRouter(RequestRouter):
    """The session's home replica first, then all others (least loaded wins)."""

    def initialize_state(self, **kwargs: object) -> None:
        self._sessions = SessionHomes()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        key = None
        if pending_request is not None:
            key = pending_request.kwargs.get(SESSION_KWARG)
            # Once every rank was tried, Serve waits a little before trying again.
            pending_request.routing_context.should_backoff = True
        if not key:
            return [list(candidate_replicas)]
        return self._sessions.choose(key, list(candidate_replicas))

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)
        self._sessions.in_flight[replica_id.unique_id] += 1

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        if self._sessions.in_flight[replica_id.unique_id] > 0:
            self._sessions.in_flight[replica_id.unique_id] -= 1

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: object) -> None:
        super().on_request_routed(pending_request, replica_id, result)  # type: ignore[arg-type]
        key = pending_request.kwargs.get(SESSION_KWARG) if pending_request else None
        if key:
            self._sessions.moved(key, replica_id.unique_id)
