"""``runtime="ray-detached"``: the controller is a detached, named, restartable actor.
Killing it under HTTP load loses no request (each succeeds or gets a clear error, none
hangs); when Ray restarts it, it re-adopts the same replica actors from its GCS
checkpoint instead of starting new ones, and then manages them again."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from llmserve import serve
from llmserve.serve.ray.controller_actor import CONTROLLER_NAME
from llmserve.serve.ray_runtime import NAMESPACE, replica_actor
from tests.integration.ray.apps import SlowPlain
from tests.integration.ray.conftest import RayCluster
from tests.integration.ray.http_load import load_with_kill

pytestmark = [pytest.mark.ray, pytest.mark.timeout(150)]


def _replicas() -> dict[str, tuple[str, int]]:
    """replica id -> (state, pid) of SlowPlain, asking the controller (retried while it
    restarts)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            deployment = serve.status().applications["default"].deployments["SlowPlain"]
            return {r.replica_id: (r.state, r.node.pid if r.node else 0)
                    for r in deployment.replicas}
        except Exception:
            assert time.monotonic() < deadline, "the controller did not come back"
            time.sleep(0.2)


def test_controller_kill_under_load_then_readopts_the_same_replicas(
        ray_serve: RayCluster) -> None:
    import ray

    serve.run(SlowPlain.options(num_replicas=2).bind(), route_prefix="/slow", port=0,
              runtime="ray-detached")
    url = str(serve.http_url())
    before = _replicas()
    assert len(before) == 2 and all(state == "RUNNING" for state, _ in before.values())
    controller = ray.get_actor(CONTROLLER_NAME, NAMESPACE)
    controller_pid = ray.get(controller.ping.remote())

    codes = asyncio.run(load_with_kill(
        url, 60, lambda: ray.kill(controller, no_restart=False), delay_s=0.3, kill_after_s=0.3))
    assert sum(codes.values()) == 60 and codes.get(200, 0) == 60  # replicas kept serving

    deadline = time.monotonic() + 30
    while (after := _replicas()) != before:  # the same actors (same pids), not new ones
        assert time.monotonic() < deadline, f"replicas changed: {before} -> {after}"
        time.sleep(0.2)
    assert ray.get(controller.ping.remote()) != controller_pid  # Ray restarted it
    assert httpx.get(f"{url}/-/status").json()["runtime"] == "ray-detached"

    # the restarted controller manages the adopted replicas: it replaces a killed one
    victim = sorted(before)[0]
    ray.kill(replica_actor(victim))
    deadline = time.monotonic() + 20
    while not (victim not in (now := _replicas()) and len(now) == 2
               and all(state == "RUNNING" for state, _ in now.values())):
        assert time.monotonic() < deadline, f"no replacement: {now}"
        time.sleep(0.1)
    assert set(now) - set(before) and not set(now) & {victim}
    # ... and it scales them (new replica ids do not repeat adopted ones)
    serve.run(SlowPlain.options(num_replicas=3).bind(), route_prefix="/slow", port=0,
              runtime="ray-detached")
    assert len(set(_replicas())) == 3
    assert httpx.get(f"{url}/slow").status_code == 200
