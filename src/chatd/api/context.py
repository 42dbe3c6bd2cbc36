"""What the routes need from the running server, in one typed object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from chatd.api.auth import KeyChecker
from chatd.api.deployment import Peers
from chatd.api.gatekeeper import Gatekeeper
from chatd.api.metrics import Metrics
from chatd.chat.service import ChatService


@dataclass(frozen=True)
class ServerContext:
    chat: ChatService
    stats: Callable[[], dict[str, int | float]]
    model_name: str
    fingerprint: str
    created: int
    auth: KeyChecker
    gate: Gatekeeper               # per-key limits and the admission queue
    metrics: Metrics
    metrics_require_key: bool = False
    alive: Callable[[], bool] = lambda: True  # the engine can still make progress
    kv_cache: str = "f16"
    deterministic: bool = False  # batch-invariant mode (--deterministic)
    kv_layout: str = "unified"   # or "split": one KV stream per sequence
    weights: str = "unknown"     # the weights' type as served (--weights)
    peers: Peers | None = None   # the other replicas, when this is one of several


def context(request: Request) -> ServerContext:
    return request.app.state.ctx
