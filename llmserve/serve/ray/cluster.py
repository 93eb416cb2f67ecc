"""What runs where on the Ray cluster, asked from the driver."""

from __future__ import annotations

from typing import Any

from llmserve.serve.instance import get_instance
from llmserve.serve.ray.names import NAMESPACE, replica_actor_name
from llmserve.serve.ray.node_info import ReplicaNodeInfo


def replica_placements() -> dict[str, ReplicaNodeInfo]:
    """Where each replica actor of the running serve instance runs, as the controller
    actor knows it ({} on the local runtime)."""
    instance = get_instance()
    if instance.plane is None:
        return {}
    return instance.submit(instance.plane.placements())


def replica_actor(replica_id: str, app_name: str = "default") -> Any:
    """The Ray actor handle of one running replica (found by its name)."""
    import ray

    return ray.get_actor(replica_actor_name(app_name, replica_id), NAMESPACE)
