"""``runtime="ray"``: the controller is a detached, named, restartable actor.
Killing it under HTTP load loses no request (each succeeds or gets a clear error, none
hangs); when Ray restarts it, it re-adopts the same replica actors from its GCS
checkpoint instead of starting new ones (also one that was still starting), and then
manages them again. The membership actor is restartable too: killing it under load
loses nothing, and the controller republishes to it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import httpx
import pytest

from llmserve import serve
from llmserve.serve.instance import get_instance
from llmserve.serve.ray.cluster import replica_actor
from llmserve.serve.ray.names import (
    CONTROLLER_NAME,
    MEMBERSHIP_NAME,
    NAMESPACE,
    REPLICA_NAME_PREFIX,
)
from tests.integration.ray.apps import SlowPlain, SlowStart
from tests.integration.ray.conftest import RayCluster
from tests.integration.ray.http_load import load_with_kill

pytestmark = [pytest.mark.ray, pytest.mark.timeout(150)]
RUNTIME = "ray"


def _replicas(deployment_name: str = "SlowPlain") -> dict[str, tuple[str, int]]:
    """replica id -> (state, pid) of a deployment, asking the controller (retried while
    it restarts)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            deployment = serve.status().applications["default"].deployments[deployment_name]
            return {r.replica_id: (r.state, r.node.pid if r.node else 0)
                    for r in deployment.replicas}
        except Exception:
            assert time.monotonic() < deadline, "the controller did not come back"
            time.sleep(0.2)


def test_controller_kill_under_load_then_readopts_the_same_replicas(
        ray_serve: RayCluster) -> None:
    import ray

    serve.run(SlowPlain.options(num_replicas=2).bind(), route_prefix="/slow", port=0,
              runtime=RUNTIME)
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
    assert httpx.get(f"{url}/-/status").json()["runtime"] == "ray"

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
              runtime=RUNTIME)
    assert len(set(_replicas())) == 3
    assert httpx.get(f"{url}/slow").status_code == 200


def _replica_actor_names() -> list[str]:
    from ray.util import list_named_actors

    return sorted(e["name"] for e in list_named_actors(all_namespaces=True)  # type: ignore[index]
                  if e["namespace"] == NAMESPACE  # type: ignore[index]
                  and e["name"].startswith(REPLICA_NAME_PREFIX))  # type: ignore[index]


def test_membership_actor_killed_under_load_comes_back_with_the_snapshot(
        ray_serve: RayCluster) -> None:
    import ray

    serve.run(SlowPlain.options(num_replicas=2).bind(), route_prefix="/slow", port=0,
              runtime=RUNTIME)
    url = str(serve.http_url())
    membership = ray.get_actor(MEMBERSHIP_NAME, NAMESPACE)
    version = ray.get(membership.current_version.remote())

    codes = asyncio.run(load_with_kill(
        url, 60, lambda: ray.kill(membership, no_restart=False), delay_s=0.3,
        kill_after_s=0.3))
    assert sum(codes.values()) == 60 and codes.get(200, 0) == 60  # the proxy kept routing

    deadline = time.monotonic() + 20  # Ray restarted it; the controller republished
    while True:
        with contextlib.suppress(Exception):
            if ray.get(membership.current_version.remote(), timeout=5) > version:
                break
        assert time.monotonic() < deadline, "the membership actor got no snapshot again"
        time.sleep(0.1)
    # a scale-up afterwards reaches the driver's proxy through the restarted actor
    serve.run(SlowPlain.options(num_replicas=3).bind(), route_prefix="/slow", port=0,
              runtime=RUNTIME)
    router = get_instance().controller.router_for("default", "SlowPlain")
    assert sorted(router.replica_ids) == sorted(_replicas())
    assert len(router.replica_ids) == 3
    pids = {httpx.get(f"{url}/slow").json()["pid"] for _ in range(30)}
    assert len(pids) == 3


def _run_slow_start_until_actors(count: int) -> tuple[threading.Thread, list[str]]:
    """``serve.run`` a replica that takes 6 s to start, from a thread (the call fails when
    the controller dies); returns once ``count`` replica actors exist, and their names."""

    def deploy() -> None:
        with contextlib.suppress(Exception):
            serve.run(SlowStart.bind(6.0), route_prefix=None, runtime=RUNTIME)

    thread = threading.Thread(target=deploy, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while len(names := _replica_actor_names()) < count:
        assert time.monotonic() < deadline, f"{count} replica actors were never created"
        time.sleep(0.05)
    return thread, names


def test_a_replica_starting_when_the_controller_dies_is_adopted_not_restarted(
        ray_serve: RayCluster) -> None:
    import ray

    deployer, names = _run_slow_start_until_actors(1)
    (name,) = names
    actor_id = ray.get_actor(name, NAMESPACE)._actor_id.hex()
    ray.kill(ray.get_actor(CONTROLLER_NAME, NAMESPACE), no_restart=False)

    deadline = time.monotonic() + 40
    while [state for state, _ in _replicas("SlowStart").values()] != ["RUNNING"]:
        assert time.monotonic() < deadline, _replicas("SlowStart")
        time.sleep(0.2)
    (replica_id,) = _replicas("SlowStart")
    assert name.endswith(":" + replica_id)  # the replica it was starting ...
    assert _replica_actor_names() == [name]  # ... and no other
    assert ray.get_actor(name, NAMESPACE)._actor_id.hex() == actor_id  # the same actor
    deployer.join(timeout=30)


def test_a_rolling_update_interrupted_by_a_controller_kill_finishes_with_its_replica(
        ray_serve: RayCluster) -> None:
    import ray

    serve.run(SlowStart.bind(0.0), route_prefix=None, runtime=RUNTIME)
    (old_name,) = _replica_actor_names()

    updater, names = _run_slow_start_until_actors(2)  # the new version's replica starts
    (new_name,) = set(names) - {old_name}
    actor_id = ray.get_actor(new_name, NAMESPACE)._actor_id.hex()
    ray.kill(ray.get_actor(CONTROLLER_NAME, NAMESPACE), no_restart=False)

    deadline = time.monotonic() + 40  # the update finishes with that same replica
    while _replica_actor_names() != [new_name] or [
            state for state, _ in _replicas("SlowStart").values()] != ["RUNNING"]:
        assert time.monotonic() < deadline, (_replica_actor_names(), _replicas("SlowStart"))
        time.sleep(0.2)
    assert ray.get_actor(new_name, NAMESPACE)._actor_id.hex() == actor_id
    updater.join(timeout=30)
