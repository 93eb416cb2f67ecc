"""Composed apps on the Ray runtime: the same application code as on the local runtime."""

from __future__ import annotations

import os

import httpx
import pytest

from llmserve import serve
from llmserve.serve.exceptions import ConfigError
from llmserve.serve.ray_runtime import replica_placements
from tests.integration.ray.apps import Adder, Gateway, Plain
from tests.integration.ray.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


def test_composed_app_over_http_and_handles(ray_serve: RayCluster) -> None:
    handle = serve.run(Gateway.bind(Adder.bind(10)), port=0, runtime="ray")
    url = serve.http_url()
    with httpx.Client(base_url=str(url), timeout=30) as client:
        assert client.get("/add", params={"x": 5}).json() == {"result": 15}
        assert client.get("/add_sync", params={"x": 1}).json() == {"result": 11}
        assert client.post("/echo", json={"a": [1, 2]}).json() == {"a": [1, 2]}
        assert client.get("/stream", params={"n": 3}).text == "0\n1\n2\n"
        assert client.get("/count", params={"n": 4}).json() == [0, 1, 2, 3]
        assert client.get("/add", params={"x": "nan"}).status_code == 422
        pids = {client.get("/pid").json()["pid"] for _ in range(20)}
    assert os.getpid() not in pids and len(pids) == 2  # two replica actors serve it
    assert handle.add.remote(1).result(timeout_s=30) == {"result": 11}
    status = serve.status()
    assert status.runtime == "ray"
    app = status.applications["default"]
    assert app.deployments["Gateway"].running_replicas == 2
    placements = replica_placements()
    assert len(placements) == 3
    assert all(p.pid != os.getpid() and p.node_id for p in placements.values())


def test_handles_from_the_driver(ray_serve: RayCluster) -> None:
    handle = serve.run(Adder.bind(2), route_prefix=None, runtime="ray")
    assert handle.remote(3).result(timeout_s=30) == 5
    assert list(handle.options(stream=True).count.remote(3)) == [0, 1, 2]
    with pytest.raises(ValueError, match="bad input"):
        handle.fail.remote().result(timeout_s=30)
    where = handle.where.remote().result(timeout_s=30)
    assert where["pid"] != os.getpid()
    assert where["replica"].startswith("Adder#")


def test_plain_call_ingress(ray_serve: RayCluster) -> None:
    serve.run(Plain.bind(), route_prefix="/plain", port=0, runtime="ray")
    reply = httpx.post(f"{serve.http_url()}/plain/x", content=b"hi", timeout=30)
    assert reply.json() == {"path": "/plain/x", "body": "hi"}


def test_bad_ray_actor_options_fail_the_deploy(ray_serve: RayCluster) -> None:
    bad = Adder.options(ray_actor_options={"num_cpu": 1})
    with pytest.raises(RuntimeError, match="unknown ray_actor_options keys"):
        serve.run(bad.bind(1), route_prefix=None, runtime="ray")
    with pytest.raises(ConfigError):
        from llmserve.serve.ray.placement import replica_placement

        replica_placement({"num_gpus": 1.5})
