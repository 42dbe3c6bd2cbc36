"""Serve request router: a session's requests go to the replica that holds its prefix.

Rendezvous hashing over the live replicas: each session key ranks the replicas by
hash(key, replica id) and prefers the top one. A replica joining or leaving moves only
the sessions it wins or held, not everyone's. When the preferred replica is saturated
(Serve's `max_ongoing_requests` reached), the next rank is every other replica and
Serve's own queue-length probes pick the least loaded of them. Requests without a key
go to the least loaded replica.
"""

from __future__ import annotations

import hashlib

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

SESSION_KWARG = "session"
"""The keyword argument of the engine call that carries the session key."""


def _score(key: str, replica: RunningReplica) -> bytes:
    token = f"{key}\0{replica.replica_id.unique_id}".encode()
    return hashlib.blake2b(token, digest_size=8).digest()


def rank(key: str, replicas: list[RunningReplica]) -> list[RunningReplica]:
    """Replicas in the order this key prefers them (highest random weight first)."""
    return sorted(replicas, key=lambda r: _score(key, r), reverse=True)


class SessionAffinityRouter(RequestRouter):
    """The preferred replica first, then all others (least loaded wins)."""

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
        ranked = rank(key, list(candidate_replicas))
        return [ranked[:1], ranked[1:]]
