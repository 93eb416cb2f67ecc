"""Replicas that run in the HTTP proxy's process on the Ray runtime (``in_proxy``).

The same `LocalReplica` as on the local runtime; only where it says it runs differs: the
driver's Ray node and the resources its options declare (Ray reserves none for it).
"""

from __future__ import annotations

import os
import socket

from llmserve.serve.local_runtime import LocalReplica
from llmserve.serve.ray.placement import declared_resources
from llmserve.serve.status import ReplicaNode


class InProxyReplica(LocalReplica):
    @property
    def node(self) -> ReplicaNode:
        import ray

        util: object = ray.util
        node_ip = str(util.get_node_ip_address())  # type: ignore[attr-defined]
        return ReplicaNode(ray.get_runtime_context().get_node_id(), node_ip,
                           socket.gethostname(), os.getpid(),
                           declared_resources(self.spec.config.ray_actor_options))
