"""Failure, replacement, autoscaling, drain and rolling updates, under load."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from llmserve import serve

pytestmark = pytest.mark.usefixtures("serve_instance")


def wait_for(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def deployment_status(name: str, app: str = "default"):  # type: ignore[no-untyped-def]
    return serve.status().applications[app].deployments[name]


@serve.deployment(num_replicas=2, health_check_period_s=0.1, health_check_timeout_s=1)
class Fragile:
    def __init__(self) -> None:
        self.healthy = True

    async def slow_then_break(self, seconds: float) -> str:
        self.healthy = False  # the next health check fails while this request runs
        await asyncio.sleep(seconds)
        return "ok"

    def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("sick")

    def who(self) -> str:
        return serve.get_replica_context().replica_id


def test_unhealthy_replica_is_replaced_and_its_in_flight_request_fails_clearly() -> None:
    handle = serve.run(Fragile.bind(), route_prefix=None)
    before = {r.replica_id for r in deployment_status("Fragile").replicas}
    in_flight = handle.slow_then_break.remote(30)
    with pytest.raises(serve.ReplicaDiedError, match=r"died while serving.*health check failed"):
        in_flight.result(timeout_s=10)
    wait_for(lambda: deployment_status("Fragile").running_replicas == 2)
    after = {r.replica_id for r in deployment_status("Fragile").replicas}
    assert len(before & after) == 1 and len(after - before) == 1
    assert {handle.who.remote().result() for _ in range(20)} == after


@serve.deployment(
    max_ongoing_requests=2,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 1,
                        "upscale_delay_s": 0, "downscale_delay_s": 0.5,
                        "look_back_period_s": 0.3},
    graceful_shutdown_timeout_s=5,
)
class Elastic:
    async def __call__(self, request: object) -> str:
        await asyncio.sleep(0.3)
        return "ok"


def test_scale_up_under_load_then_down_when_idle_without_errors() -> None:
    serve.run(Elastic.bind(), port=0)
    url = serve.http_url()
    peak = 0

    def one(_: int) -> int:
        return httpx.get(url, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(48)]
        while not all(f.done() for f in futures):
            peak = max(peak, deployment_status("Elastic").running_replicas)
            time.sleep(0.05)
        codes = Counter(f.result() for f in futures)
    assert codes == {200: 48}
    assert peak >= 3
    wait_for(lambda: deployment_status("Elastic").target_replicas == 1, timeout_s=10)
    wait_for(lambda: len(deployment_status("Elastic").replicas) == 1, timeout_s=10)


@serve.deployment(autoscaling_config={"min_replicas": 0, "max_replicas": 2,
                                      "downscale_delay_s": 0.3, "look_back_period_s": 0.2})
class ScaleToZero:
    def __call__(self, x: int) -> int:
        return x


def test_scale_to_zero_and_a_queued_request_wakes_a_replica() -> None:
    handle = serve.run(ScaleToZero.bind(), route_prefix=None)
    assert deployment_status("ScaleToZero").running_replicas == 0
    assert handle.remote(7).result(timeout_s=10) == 7
    wait_for(lambda: deployment_status("ScaleToZero").running_replicas == 0, timeout_s=10)


@serve.deployment(num_replicas=1, graceful_shutdown_timeout_s=5)
class Draining:
    async def __call__(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "finished"


def test_shutdown_drains_in_flight_requests() -> None:
    handle = serve.run(Draining.bind(), route_prefix=None)
    pending = [handle.remote(0.5) for _ in range(3)]
    time.sleep(0.1)
    started = time.monotonic()
    serve.shutdown()
    assert time.monotonic() - started >= 0.3
    assert [p.result(timeout_s=1) for p in pending] == ["finished"] * 3


@serve.deployment(num_replicas=2, max_ongoing_requests=4)
class Versioned:
    def __init__(self, version: str) -> None:
        self.version = version

    async def __call__(self, request: object) -> str:
        await asyncio.sleep(0.05)
        return self.version


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_redeploy_rolls_replicas_without_dropping_requests() -> None:
    serve.run(Versioned.bind("v1"), port=0)
    url = serve.http_url()
    stop = False
    seen: Counter[str] = Counter()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop:
                response = client.get(url)
                seen[response.text if response.status_code == 200 else
                     f"error {response.status_code}"] += 1

    with ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(load) for _ in range(4)]
        wait_until(lambda: seen["v1"] >= 4)  # load is flowing before the redeploy
        serve.run(Versioned.bind("v2"), port=0)
        wait_until(lambda: seen["v2"] >= 4)
        stop = True
        for w in workers:
            w.result()
    assert set(seen) == {"v1", "v2"}, seen
    st = deployment_status("Versioned")
    assert st.running_replicas == 2 and len({r.version for r in st.replicas}) == 1
