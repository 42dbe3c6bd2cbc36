"""Cluster fixtures: a real multi-node Ray cluster on this machine, chatd deployed on it.

`ray.cluster_utils.Cluster`: a head node with no CPUs (it runs Serve's controller, its
HTTP proxy and chatd's CPU-less ingress) and two worker nodes of one CPU each, one
engine replica per worker node. One cluster per test module: starting Ray costs tens
of seconds on two cores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from chatd.config import Settings

try:  # the test modules skip themselves when Ray is missing (require_ray)
    import ray
    from ray import serve

    from chatd.cluster.localcluster import local_cluster, running_replicas, wait_until
except ImportError:  # pragma: no cover - depends on the install
    ray = None

SKIP_REASON = "Ray Serve is not installed: pip install 'chatd[ray]' to run the cluster tests"
MODEL = "SmolLM2-135M-Instruct"
REPLICAS = 2

__all__ = ["running_replicas", "serve", "wait_until"]


def require_ray() -> None:
    """Skip the calling test module when Ray is not installed, saying why."""
    if ray is None:
        pytest.skip(SKIP_REASON, allow_module_level=True)


@dataclass
class Deployed:
    url: str
    cluster: Any
    settings: Settings

    def client(self, key: str | None = None, timeout: float = 120.0) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


def engine_replicas() -> list[dict[str, Any]]:
    """The live engine replica actors: their pids and nodes."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
    return [{"pid": a.pid, "node_id": a.node_id, "name": a.name} for a in actors
            if a.class_name.endswith(":ChatdEngine")]


def deploy(settings: Settings) -> Iterator[Deployed]:
    """Two 1-CPU worker nodes, one engine replica each; torn down after the module."""
    with local_cluster(settings, nodes=REPLICAS, replicas=REPLICAS) as (url, cluster):
        yield Deployed(url, cluster, settings)


def cluster_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"threads": 1, "max_sequences": 8, "ctx_size": 2048,
                            "store": "off", "webui": False, "shutdown_grace": 5.0}
    base.update(overrides)
    return Settings(**base)


def sse_events(lines: Iterator[str]) -> list[str]:
    """The `data:` payloads of an SSE stream, in order."""
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


def chat_body(messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": messages, "temperature": 0, **extra}


def stream_outcome(client: httpx.Client, body: dict[str, Any]) -> str:
    """'ok' (finish_reason and [DONE]), 'error' (an error event, then [DONE]), or a
    description of anything else (a torn or malformed stream: never acceptable)."""
    try:
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            if r.status_code != 200:
                r.read()
                return "http-" + str(r.status_code)
            events = sse_events(r.iter_lines())
    except httpx.HTTPError as exc:
        return f"transport error: {exc!r}"
    if not events or events[-1] != "[DONE]":
        return f"torn stream: {events[-2:]}"
    payloads = [json.loads(e) for e in events[:-1]]
    if any("error" in p for p in payloads):
        return "error"
    if any(c.get("finish_reason") for p in payloads for c in p.get("choices", [])):
        return "ok"
    return f"no finish_reason: {events[-3:]}"
