"""Status on the local runtime: `serve.status()`, ``GET /-/status`` and `llmserve status`."""

from __future__ import annotations

import os
import socket

import httpx
import pytest

from llmserve import serve
from llmserve.cli import main
from llmserve.serve.status import ReplicaState

pytestmark = pytest.mark.usefixtures("serve_instance")


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.5, "resources": {"a": 1}})
class Declared:
    async def __call__(self, request: object) -> str:
        return "ok"


@serve.deployment
class Bare:
    async def __call__(self) -> str:
        return "ok"


def test_replicas_show_host_pid_and_declared_resources() -> None:
    serve.run(Declared.bind(), name="declared", route_prefix="/d", port=0)
    serve.run(Bare.bind(), name="bare", route_prefix=None, port=0)
    status = serve.status()
    replicas = status.applications["declared"].deployments["Declared"].replicas
    assert len(replicas) == 2
    for replica in replicas:
        assert replica.state is ReplicaState.RUNNING and replica.node is not None
        assert replica.node.hostname == socket.gethostname()
        assert replica.node.pid == os.getpid()
        assert replica.node.resources == {"CPU": 0.5, "a": 1.0}
    (bare,) = status.applications["bare"].deployments["Bare"].replicas
    assert bare.node is not None and bare.node.resources == {}


def test_status_route_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    serve.run(Declared.bind(), name="declared", route_prefix="/d", port=0)
    url = str(serve.http_url())
    data = httpx.get(f"{url}/-/status").json()
    assert data["runtime"] == "local" and data["http_url"] == url
    dep = data["applications"]["declared"]["deployments"]["Declared"]
    assert dep["status"] == "HEALTHY" and dep["running_replicas"] == 2
    ids = sorted(r["replica_id"] for r in dep["replicas"])
    assert all(r["node"]["resources"] == {"CPU": 0.5, "a": 1.0} for r in dep["replicas"])

    assert main(["status", "--address", url]) == 0
    out = capsys.readouterr().out
    assert "application declared: RUNNING" in out
    assert "deployment Declared: HEALTHY   running 2/2" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("Declared#")]
    assert sorted(row[0] for row in rows) == ids
    for row in rows:
        assert row[1:5] == ["RUNNING", "local", "127.0.0.1", str(os.getpid())]
        assert row[-2:] == ["CPU=0.5", "a=1"]


def test_cli_status_without_a_server_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--address", "http://127.0.0.1:9"]) == 1
    assert "no status from http://127.0.0.1:9" in capsys.readouterr().err
