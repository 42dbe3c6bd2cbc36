"""A real multi-node Ray cluster on this one machine, with chatd deployed on it.

For the cluster tests and `make bench-cluster`: `ray.cluster_utils.Cluster` with a
head node of no CPUs (Serve's controller, its one HTTP proxy and chatd's CPU-less
ingress) and worker nodes of `cpus_per_node` CPUs, each its own raylet, so replicas
land on different nodes as they would on different machines.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import ray
from ray import serve
from ray.cluster_utils import Cluster

from chatd.cluster.actors import NAMESPACE, kill_shared_actor
from chatd.cluster.app import APP_NAME, build_app, shared_actor_names
from chatd.config import Settings

READY_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running_replicas() -> int:
    """Engine replicas Serve reports RUNNING."""
    status = serve.status().applications.get(APP_NAME)
    deployment = status.deployments.get("ChatdEngine") if status else None
    return 0 if deployment is None else deployment.replica_states.get("RUNNING", 0)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


@contextlib.contextmanager
def local_cluster(settings: Settings, *, nodes: int, replicas: int,
                  cpus_per_node: int = 1) -> Iterator[tuple[str, Cluster]]:
    """Start the cluster, deploy chatd, yield (base URL, cluster); tear it all down."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=cpus_per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
        port = free_port()
        # One proxy, on the head: every node here shares this machine's ports.
        serve.start(proxy_location="HeadOnly",
                    http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(settings, replicas, threads=cpus_per_node), name=APP_NAME,
                  route_prefix="/", blocking=False)
        wait_until(lambda: running_replicas() == replicas, READY_TIMEOUT_S,
                   f"{replicas} engine replica(s)")
        yield f"http://127.0.0.1:{port}", cluster
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
                for name in shared_actor_names(APP_NAME):
                    kill_shared_actor(name)
        finally:
            ray.shutdown()
            cluster.shutdown()
