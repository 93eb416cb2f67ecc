"""Scale up and down, autoscale from load inside replicas, and kill replica actors under
load: every request succeeds or fails with a clear error; none hangs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from llmserve import serve
from llmserve.serve.exceptions import ReplicaDiedError
from llmserve.serve.ray.cluster import replica_placements
from tests.integration.ray.apps import Fanout, Sleeper, SlowPlain
from tests.integration.ray.conftest import RayCluster
from tests.integration.ray.http_load import load_with_kill

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


def _running(deployment: str, app: str = "default") -> int:
    return serve.status().applications[app].deployments[deployment].running_replicas


def _wait_for(predicate: object, timeout_s: float = 30.0) -> float:
    start = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - start < timeout_s, "timed out"
        time.sleep(0.05)
    return time.monotonic() - start


class RecoveryClock:
    """Seconds from a kill until ``deployment`` runs ``n`` replicas again, none of them
    the victim (polled from a thread while the load runs)."""

    def __init__(self, deployment: str, n: int) -> None:
        self.deployment, self.n = deployment, n
        self.killed_at = 0.0
        self.victims: set[str] = set()
        self.recovered_s: float | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self, victim_replica: str) -> None:
        self.victims.add(victim_replica)
        self.killed_at = time.monotonic()
        self._thread.start()

    def _watch(self) -> None:
        while time.monotonic() - self.killed_at < 30:
            ids = {r.replica_id for r in serve.status().applications["default"]
                   .deployments[self.deployment].replicas if r.state == "RUNNING"}
            if len(ids) == self.n and not ids & self.victims:
                self.recovered_s = time.monotonic() - self.killed_at
                return
            time.sleep(0.02)

    def wait(self) -> float:
        self._thread.join()
        assert self.recovered_s is not None, "no replacement within 30 s"
        return self.recovered_s


def _available_cpus() -> float:
    import ray

    return round(ray.available_resources().get("CPU", 0.0), 2)


def test_scale_up_and_down_frees_resources(ray_serve: RayCluster) -> None:
    baseline = _available_cpus()
    serve.run(Sleeper.options(num_replicas=1).bind(), route_prefix=None, runtime="ray")
    serve.run(Sleeper.options(num_replicas=3).bind(), route_prefix=None, runtime="ray")
    assert _running("Sleeper") == 3 and len(replica_placements()) == 3
    _wait_for(lambda: _available_cpus() == round(baseline - 0.3, 2))
    serve.run(Sleeper.options(num_replicas=1).bind(), route_prefix=None, runtime="ray")
    _wait_for(lambda: len(replica_placements()) == 1)
    _wait_for(lambda: _available_cpus() == round(baseline - 0.1, 2))


def test_autoscaling_sees_load_from_handles_inside_replicas(ray_serve: RayCluster) -> None:
    sleeper = Sleeper.options(num_replicas="auto", autoscaling_config={
        "min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1,
        "upscale_delay_s": 0, "downscale_delay_s": 0.5, "look_back_period_s": 0.3})
    handle = serve.run(Fanout.bind(sleeper.bind()), route_prefix=None, runtime="ray")
    assert _running("Sleeper") == 1
    calls = [handle.remote(4.0) for _ in range(6)]  # Fanout -> Sleeper inside the cluster
    _wait_for(lambda: _running("Sleeper") == 3, timeout_s=20)
    assert all(isinstance(c.result(timeout_s=30), int) for c in calls)
    _wait_for(lambda: _running("Sleeper") == 1, timeout_s=20)


async def _hammer_handle(handle: serve.DeploymentHandle, n: int, delay_s: float,
                         kill: object) -> tuple[int, int]:
    ok = died = 0

    async def one(i: int) -> None:
        nonlocal ok, died
        await asyncio.sleep(i * 0.02)
        try:
            await asyncio.wait_for(handle.remote(delay_s), 30)
            ok += 1
        except ReplicaDiedError:
            died += 1

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0.4)
    kill()  # type: ignore[operator]
    await asyncio.gather(*tasks)  # a TimeoutError (a hung request) would fail the test
    return ok, died


def test_killing_a_replica_under_load_via_handles(ray_serve: RayCluster) -> None:
    import ray

    handle = serve.run(Sleeper.options(num_replicas=2).bind(), route_prefix=None,
                       runtime="ray")
    victim, replica = handle.me_and_id.remote().result(timeout_s=30)
    clock = RecoveryClock("Sleeper", 2)

    def kill() -> None:
        clock.start(replica)
        ray.kill(victim)

    ok, died = asyncio.run(_hammer_handle(handle, 60, 0.5, kill))
    assert ok + died == 60
    assert 0 < died < 30 and ok > 30  # requests running on the victim failed, clearly
    recovery_s = clock.wait()
    assert recovery_s < 10  # a replacement serves within 10 s
    assert handle.remote(0).result(timeout_s=30) > 0
    print(f"handle kill: ok={ok} died={died} replaced in {recovery_s:.2f} s")


def test_killing_a_streaming_replica_ends_the_stream_with_an_error(
        ray_serve: RayCluster) -> None:
    import ray

    handle = serve.run(Sleeper.bind(), route_prefix=None, runtime="ray")
    victim, _ = handle.me_and_id.remote().result(timeout_s=30)
    got: list[int] = []
    with pytest.raises(ReplicaDiedError):
        for item in handle.options(stream=True).tokens.remote(100, 0.05):
            got.append(item)
            if item == 3:
                ray.kill(victim)
    assert got[:4] == [0, 1, 2, 3] and len(got) < 100


def test_killing_an_ingress_replica_under_http_load(ray_serve: RayCluster) -> None:
    import ray

    handle = serve.run(SlowPlain.options(num_replicas=2).bind(), route_prefix="/slow",
                       port=0, runtime="ray")
    victim, replica = handle.me_and_id.remote().result(timeout_s=30)
    clock = RecoveryClock("SlowPlain", 2)

    def kill() -> None:
        clock.start(replica)
        ray.kill(victim)

    codes = asyncio.run(load_with_kill(str(serve.http_url()), 60, kill))
    assert sum(codes.values()) == 60
    assert set(codes) <= {200, 503} and codes.get(503, 0) < 30
    assert codes[200] > 30
    recovery_s = clock.wait()
    assert recovery_s < 10
    print(f"http kill: {codes}, replaced in {recovery_s:.2f} s")
