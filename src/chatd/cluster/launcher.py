"""`chatd serve --replicas N [--ray-address ADDR]`: start (or join) Ray, run the app.

Without `--ray-address` a local Ray instance is started in this process; with it, the
app is deployed on an existing cluster (`auto`: the one this machine belongs to).
Serve's HTTP proxy listens on `--host`/`--port`, the routes are chatd's own. SIGTERM or
Ctrl-C deletes the app (replicas get `--shutdown-grace` to finish what they run).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import ray
from ray import serve

from chatd.cluster.actors import NAMESPACE, kill_shared_actor
from chatd.cluster.app import APP_NAME, build_app, shared_actor_names
from chatd.config import Settings

log = logging.getLogger("chatd.cluster")


def replica_threads(settings: Settings, replicas: int, local: bool) -> int:
    """CPUs (and llama.cpp threads) per replica: `--threads`, else a local machine's
    cores shared out, else 1 (a cluster's nodes are not this machine)."""
    if settings.threads:
        return settings.threads
    if local:
        return max(1, (os.cpu_count() or 1) // replicas)
    return 1


def run(settings: Settings, replicas: int, ray_address: str | None,
        gpus: float = 0.0) -> None:
    local = ray_address is None
    threads = replica_threads(settings, replicas, local)
    if local:
        # Enough logical CPUs for the replicas asked for, even on a small machine.
        cpus = max(os.cpu_count() or 1, replicas * threads)
        if replicas * threads > (os.cpu_count() or 1):
            log.warning("%d replicas x %d threads is more than this machine's %d cores",
                        replicas, threads, os.cpu_count() or 1)
        ray.init(num_cpus=cpus, include_dashboard=False, namespace=NAMESPACE,
                 log_to_driver=settings.log_level == "debug")
    else:
        ray.init(address=ray_address, namespace=NAMESPACE,
                 log_to_driver=settings.log_level == "debug")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(settings, replicas, threads=threads, gpus=gpus), name=APP_NAME,
                  route_prefix="/", blocking=False)
        log.info("chatd ready at http://%s:%d/v1: %d engine replica(s) on Ray Serve, "
                 "%d CPU(s) and llama.cpp thread(s) each", settings.host, settings.port,
                 replicas, threads)
        stop.wait()
        log.info("shutting down: replicas get up to %gs to finish", settings.shutdown_grace)
        serve.delete(APP_NAME)
        for name in shared_actor_names(APP_NAME):
            kill_shared_actor(name)
        if local:
            serve.shutdown()
    finally:
        ray.shutdown()

