"""One small Ray cluster per test module: a head and two workers with 2 GPUs each.

GPUs are declared, not real: placement is what is tested; replicas that "use" a GPU run
CPU code (the simulated engine). Logical CPUs are declared generously (they do not start
processes by themselves); every test deployment asks for little.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from llmserve import serve


@dataclass
class RayCluster:
    cluster: object
    head_node_id: str
    worker_node_ids: list[str]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    serve.shutdown()
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 4, "num_gpus": 0})
    workers = [cluster.add_node(num_cpus=4, num_gpus=2, resources={"worker": 1})
               for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=True)
    cluster.wait_for_nodes()
    head = next(n["NodeID"] for n in ray.nodes()
                if n["Alive"] and n["Resources"].get("GPU", 0) == 0)
    worker_ids = [w.node_id for w in workers]
    try:
        yield RayCluster(cluster, head, worker_ids)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def ray_serve(ray_cluster: RayCluster) -> Iterator[RayCluster]:
    serve.shutdown()
    yield ray_cluster
    serve.shutdown()
