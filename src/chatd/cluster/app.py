"""The Serve application: one ingress deployment in front of one engine deployment.

`build_app(settings, replicas)` is what `chatd serve --replicas N` runs; `app_builder`
is the same for Ray's own config files (`serve deploy chatd-serve.yaml`, KubeRay),
taking chatd's command-line flags as `args: {argv: [...]}`.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from chatd.cluster.actors import HEAD_RESOURCE
from chatd.cluster.engine import EngineReplica
from chatd.cluster.ingress import Ingress, ingress_app
from chatd.cluster.routing import SessionAffinityRouter
from chatd.config import Settings

APP_NAME = "chatd"
HEALTH_CHECK_PERIOD_S = 2.0
"""How often Serve asks each replica whether its engine thread lives."""


def limits_actor_name(app_name: str) -> str:
    return f"{app_name}-limits"


def reports_actor_name(app_name: str) -> str:
    return f"{app_name}-reports"


def shared_actor_names(app_name: str) -> list[str]:
    """The deployment's shared actors (chatd.cluster.actors), removed with it."""
    return [limits_actor_name(app_name), reports_actor_name(app_name)]


def build_app(settings: Settings, replicas: int, *, app_name: str = APP_NAME,
              threads: int = 1, gpus: float = 0.0) -> Any:
    """N engine replicas of `threads` CPUs each (num_cpus and llama.cpp threads alike)
    and `gpus` GPUs (Ray then sets CUDA_VISIBLE_DEVICES), routed by session, behind a
    CPU-less ingress."""
    settings = dataclasses.replace(settings, threads=threads)
    limits = None
    if settings.requests_per_minute is not None or settings.tokens_per_minute is not None:
        limits = limits_actor_name(app_name)
    engine = serve.deployment(EngineReplica).options(
        name="ChatdEngine",
        num_replicas=replicas,
        # Ray sets OMP_NUM_THREADS from num_cpus; llama.cpp gets its threads explicitly
        # (settings.threads above), so both agree with the CPUs Ray reserved.
        ray_actor_options={"num_cpus": threads, **({"num_gpus": gpus} if gpus else {})},
        # A replica is "saturated" when its batch is full: then the router looks elsewhere.
        max_ongoing_requests=settings.max_sequences,
        max_queued_requests=settings.max_queue * replicas,
        # A redeploy or scale-down lets running requests finish first.
        graceful_shutdown_timeout_s=max(settings.shutdown_grace, 1.0),
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        request_router_config=RequestRouterConfig(
            request_router_class=SessionAffinityRouter),
    )
    ingress = serve.deployment(ingress_app(Ingress)).options(
        name="ChatdIngress", num_replicas=1,
        # On the head node: an ingress on a worker node would die with that node and
        # take every request it relays with it (Serve's proxy then answers a bare 500).
        # The head is the cluster's one point of failure anyway.
        ray_actor_options={"num_cpus": 0, "resources": {HEAD_RESOURCE: 0.001}},
        max_ongoing_requests=max(1000, 4 * settings.max_sequences * replicas),
    )
    return ingress.bind(engine.bind(settings, limits, reports_actor_name(app_name)))


def app_builder(args: dict[str, Any]) -> Any:
    """For Ray's config files: `import_path: chatd.cluster.app:app_builder`, with
    `args: {argv: "--replicas 4 --threads 2 --api-key-file /keys"}`."""
    from chatd.cli import build_parser, settings_from_args

    argv = args.get("argv", "")
    argv = shlex.split(argv) if isinstance(argv, str) else list(argv)
    ns = build_parser().parse_args(["serve", *argv])
    return build_app(settings_from_args(ns), ns.replicas or 1, threads=ns.threads or 1,
                     gpus=ns.gpus_per_replica)
