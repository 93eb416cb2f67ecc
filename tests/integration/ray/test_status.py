"""Status on the Ray runtime: each replica's node, Ray-assigned resources and state, via
`serve.status()`, ``GET /-/status`` and `llmserve status`."""

from __future__ import annotations

import httpx
import pytest

from llmserve import serve
from llmserve.cli import main
from tests.integration.ray.apps import GpuUser, Sleeper
from tests.integration.ray.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


def test_status_shows_node_resources_and_state(ray_serve: RayCluster,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    gpus = GpuUser.options(name="Gpu", num_replicas=2)
    pinned = Sleeper.options(name="OnWorker", ray_actor_options={
        "num_cpus": 0.2, "resources": {"worker": 0.5}})
    serve.run(gpus.bind(), name="gpu", route_prefix="/gpu", port=0, runtime="ray")
    serve.run(pinned.bind(), name="pinned", route_prefix=None, runtime="ray")

    status = serve.status()
    assert status.runtime == "ray"
    gpu_replicas = status.applications["gpu"].deployments["Gpu"].replicas
    assert len(gpu_replicas) == 2
    for replica in gpu_replicas:
        assert replica.state == "RUNNING" and replica.node is not None
        assert replica.node.node_id in ray_serve.worker_node_ids
        assert replica.node.node_ip == "127.0.0.1" and replica.node.pid > 0
        assert replica.node.resources == {"GPU": 1.0} and len(replica.node.gpu_ids) == 1
    (worker_replica,) = status.applications["pinned"].deployments["OnWorker"].replicas
    assert worker_replica.node is not None
    assert worker_replica.node.node_id in ray_serve.worker_node_ids
    assert worker_replica.node.resources == {"CPU": 0.2, "worker": 0.5}

    url = str(serve.http_url())
    data = httpx.get(f"{url}/-/status", timeout=10).json()
    assert data["runtime"] == "ray"
    nodes = {r["replica_id"]: r["node"] for r in
             data["applications"]["gpu"]["deployments"]["Gpu"]["replicas"]}
    assert nodes == {r.replica_id: {"node_id": r.node.node_id, "node_ip": r.node.node_ip,
                                    "hostname": r.node.hostname, "pid": r.node.pid,
                                    "resources": {"GPU": 1.0}, "gpu_ids": r.node.gpu_ids}
                     for r in gpu_replicas if r.node is not None}

    assert main(["status", "--address", url]) == 0
    out = capsys.readouterr().out
    assert "application pinned: RUNNING" in out and "deployment Gpu: HEALTHY" in out
    for replica in gpu_replicas:
        assert replica.node is not None
        row = next(line.split() for line in out.splitlines()
                   if line.strip().startswith(replica.replica_id + " "))
        assert row[1:4] == ["RUNNING", replica.node.node_id[:12], "127.0.0.1"]
        assert " ".join(row[6:]) == f"GPU=1 (GPU ids {replica.node.gpu_ids[0]})"
