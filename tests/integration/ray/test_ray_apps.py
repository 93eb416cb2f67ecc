"""Composed apps on the Ray runtime: the same application code as on the local runtime."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from llmserve import serve
from llmserve.serve.exceptions import ConfigError
from llmserve.serve.ray.cluster import replica_placements
from tests.eventually import eventually
from tests.integration.ray.apps import Adder, Configurable, Gateway, Plain
from tests.integration.ray.conftest import RayCluster
from tests.integration.serve.overload_apps import Busy, Front, Middle, PlainFront
from tests.integration.serve.overload_checks import (
    assert_one_served_rest_rejected,
    server_errors,
)
from tests.integration.serve.ports import free_port

ROOT = Path(__file__).resolve().parents[3]

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


def test_cli_run_joins_the_cluster_as_another_driver(ray_serve: RayCluster,
                                                     tmp_path: Path) -> None:
    import ray

    config = tmp_path / "serve.yaml"
    config.write_text(
        "applications:\n"
        "  - name: hello\n"
        "    route_prefix: /hi\n"
        "    import_path: tests.integration.serve.sample_app:build\n"
        "    args: {greeting: hallo}\n"
        "    deployments:\n"
        "      - name: Hello\n"
        "        num_replicas: 2\n"
        "        ray_actor_options: {num_cpus: 0.1}\n"
    )
    port = free_port()
    address = ray_serve.cluster.address  # type: ignore[attr-defined]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmserve.cli", "run", str(config), "--port", str(port),
         "--runtime", "ray", "--address", address],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while not any("ready at" in line for line in lines):  # the proxy answers earlier
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        response = httpx.get(f"http://127.0.0.1:{port}/hi", timeout=5)
        assert response.json()["greeting"] == "hallo"
        replicas = {httpx.get(f"http://127.0.0.1:{port}/hi").json()["replica"]
                    for _ in range(30)}
        assert len(replicas) == 2
        assert ray.available_resources()["CPU"] <= 12 - 0.2 + 1e-6  # its actors are here
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + out


def test_user_config_changes_in_place_and_cancel_reaches_the_replica(
        ray_serve: RayCluster) -> None:
    handle = serve.run(Configurable.bind(), route_prefix=None, runtime="ray")
    word, pid = handle.remote().result(timeout_s=30)
    assert word == "one"
    changed = Configurable.options(user_config={"word": "two"})
    serve.run(changed.bind(), route_prefix=None, runtime="ray")
    # the same actor, with the new config
    eventually(lambda: handle.remote().result(timeout_s=30) == ("two", pid))
    call = handle.hang.remote()
    eventually(lambda: handle.num_running.remote().result(timeout_s=30) == 1)
    call.cancel()  # cancelled over there
    eventually(lambda: handle.num_running.remote().result(timeout_s=30) == 0)


def test_overload_at_any_depth_is_503_with_retry_after(ray_serve: RayCluster) -> None:
    busy = Busy.bind()
    serve.run(Front.bind(Middle.bind(busy), busy), port=0, runtime="ray")
    url = serve.http_url()
    with server_errors() as errors:  # this process's proxy answered them
        for path in ("/direct", "/deep", "/sync"):
            assert_one_served_rest_rejected(f"{url}{path}")
        serve.run(PlainFront.bind(Middle.bind(Busy.bind())), name="plain",
                  route_prefix="/plain", port=0, runtime="ray")
        assert_one_served_rest_rejected(f"{serve.http_url()}/plain")
    assert not errors, [r.getMessage() for r in errors]
