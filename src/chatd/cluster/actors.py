"""The deployment's small shared actors (rate-limit buckets, the replicas' reports).

Each is named and detached: it belongs to the deployment, not to the replica that
happened to create it first, so it outlives any one replica. It runs on the head
node, with no CPU: a worker node may leave the cluster (and with it anything placed
there), the head is the cluster's one point of failure anyway.
"""

from __future__ import annotations

import contextlib
from typing import Any

import ray

NAMESPACE = "chatd"
HEAD_RESOURCE = "node:__internal_head__"
"""The resource Ray gives only the head node."""
CALL_TIMEOUT_S = 5.0
"""How long a replica waits on a shared actor before going on without it."""


def shared_actor(cls: type, name: str, *args: Any) -> Any:
    """The deployment's actor `name` of class `cls`, created by whoever asks first."""
    remote = ray.remote(num_cpus=0, max_restarts=-1)(cls)
    return remote.options(name=name, namespace=NAMESPACE, lifetime="detached",
                          get_if_exists=True, resources={HEAD_RESOURCE: 0.001}
                          ).remote(*args)


def kill_shared_actor(name: str) -> None:
    """Remove a shared actor when the deployment goes (nothing else would)."""
    with contextlib.suppress(ValueError):  # never created
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
