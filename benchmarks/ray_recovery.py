"""Failure recovery on the Ray runtime: kill a replica actor, then the detached
controller, under steady HTTP load.

A local multi-node Ray test cluster (a head and two workers with declared GPUs, as in the
Ray tests), a plain HTTP deployment with ``--replicas`` replicas on the workers, and
``--clients`` closed-loop HTTP clients through the proxy. After ``--warmup-s`` one replica
actor is killed (``ray.kill``). Printed, from the moment of the kill:

- ``replaced_after_s``: until a replacement replica is RUNNING in `serve.status()`;
- ``replacement_serves_after_s``: until the replacement answered a request;
- ``last_failure_after_s``: until the last request that did not succeed ended;
Then the same app again (a fresh controller), and the controller actor is killed (Ray
restarts it): ``controller_back_after_s`` (it answers again, new pid) and
``same_replicas_running_after_s`` (its status shows the same replicas RUNNING, adopted,
not restarted), with the same counts. Last, the membership actor is killed (Ray restarts
it): ``snapshot_republished_after_s`` (the controller has published to it again).

- counts: ``ok``, ``error_response`` (a non-200 answer with an OpenAI-style error body),
  ``connection_closed`` (the replica died mid-response: the proxy closes the connection),
  ``hung`` (no answer within ``--request-timeout-s``; must be 0).

Run: ``.venv/bin/python -m benchmarks.ray_recovery [--clients 16] [--replicas 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.requests import Request

from llmserve import serve

RESULTS = Path(__file__).parent / "results"
APP = "recovery"


@serve.deployment(max_ongoing_requests=1000, graceful_shutdown_timeout_s=1,
                  ray_actor_options={"num_cpus": 0, "resources": {"worker": 0.01}})
class Answer:
    """Answers ``?delay_s=`` later with the id of the replica that served it."""

    async def __call__(self, request: Request) -> dict[str, str]:
        await asyncio.sleep(float(request.query_params.get("delay_s", "0")))
        return {"replica": serve.get_replica_context().replica_id}


@dataclass
class LoadLog:
    """Every request's outcome, timed on this process's monotonic clock."""

    ok: int = 0
    error_response: int = 0
    connection_closed: int = 0
    hung: int = 0
    other: int = 0
    failures_at: list[float] = field(default_factory=list)
    served_by: dict[str, float] = field(default_factory=dict)  # replica -> first answer

    def record_ok(self, replica: str) -> None:
        self.ok += 1
        self.served_by.setdefault(replica, time.monotonic())

    def record_failure(self, kind: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.failures_at.append(time.monotonic())


async def one_request(client: httpx.AsyncClient, url: str, delay_s: float, timeout_s: float,
                      log: LoadLog) -> None:
    try:
        response = await asyncio.wait_for(client.get(url, params={"delay_s": delay_s}),
                                           timeout_s)
    except TimeoutError:
        log.record_failure("hung")
        return
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
        log.record_failure("connection_closed")
        return
    if response.status_code == 200:
        log.record_ok(response.json()["replica"])
    elif "error" in response.json():
        log.record_failure("error_response")
    else:
        log.record_failure("other")


async def closed_loop(url: str, clients: int, delay_s: float, timeout_s: float,
                      stop: asyncio.Event, log: LoadLog) -> None:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=None) as client:
        async def loop() -> None:
            while not stop.is_set():
                await one_request(client, url, delay_s, timeout_s, log)

        await asyncio.gather(*(loop() for _ in range(clients)))


def running_replicas(deployment: str) -> set[str]:
    status = serve.status().applications[APP].deployments[deployment]
    return {r.replica_id for r in status.replicas if r.state == "RUNNING"}


async def wait_until(predicate: Any, timeout_s: float) -> float | None:
    """Seconds until ``predicate()`` (run in a thread) holds; None after ``timeout_s``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if await asyncio.to_thread(predicate):
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    return None


async def kill_under_load(args: argparse.Namespace, kill: Callable[[], object],
                          recover: Callable[[], Awaitable[dict[str, Any]]]
                          ) -> tuple[dict[str, Any], LoadLog, float]:
    """Closed-loop load; ``kill()`` after the warm-up; ``recover()`` measures the way
    back. Returns the figures both scenarios report (with ``recover``'s), the load's
    log and the kill's time."""
    log, stop = LoadLog(), asyncio.Event()
    load = asyncio.create_task(closed_loop(f"{serve.http_url()}/", args.clients,
                                           args.delay_s, args.request_timeout_s, stop, log))
    await asyncio.sleep(args.warmup_s)
    ok_before = log.ok
    killed_at = time.monotonic()
    kill()
    recovered = await recover()
    await asyncio.sleep(args.after_s)
    stop.set()
    await load
    late_failures = [at - killed_at for at in log.failures_at if at >= killed_at]
    figures = {
        "replicas": args.replicas, "clients": args.clients, "delay_s": args.delay_s,
        **recovered,
        "last_failure_after_s": max(late_failures) if late_failures else 0.0,
        "ok_before_kill": ok_before,
        **{k: v for k, v in asdict(log).items() if k not in ("failures_at", "served_by")},
    }
    return figures, log, killed_at


async def kill_a_replica(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from llmserve.serve.ray.cluster import replica_actor

    before = running_replicas("Answer")
    victim = sorted(before)[0]

    async def replaced() -> dict[str, Any]:
        after_s = await wait_until(
            lambda: len(running_replicas("Answer") - before) >= 1
            and len(running_replicas("Answer")) == args.replicas, 30.0)
        return {"victim": victim, "replacement": sorted(running_replicas("Answer") - before),
                "replaced_after_s": after_s}

    figures, log, killed_at = await kill_under_load(
        args, lambda: ray.kill(replica_actor(victim, APP)), replaced)
    first_answers = [at for rid, at in log.served_by.items() if rid in figures["replacement"]]
    figures["replacement_serves_after_s"] = (min(first_answers) - killed_at
                                             if first_answers else None)
    return figures


async def kill_the_controller(args: argparse.Namespace) -> dict[str, Any]:
    """Kill the detached controller actor (Ray restarts it)."""
    import ray

    from llmserve.serve.ray.names import CONTROLLER_NAME, NAMESPACE

    before = running_replicas("Answer")
    controller = ray.get_actor(CONTROLLER_NAME, NAMESPACE)
    old_pid = ray.get(controller.ping.remote())

    def restarted() -> bool:
        with contextlib.suppress(Exception):
            return bool(ray.get(controller.ping.remote(), timeout=1) != old_pid)
        return False

    def readopted() -> bool:
        with contextlib.suppress(Exception):
            return running_replicas("Answer") == before
        return False

    async def came_back() -> dict[str, Any]:
        back = await wait_until(restarted, 60.0)
        adopted = await wait_until(readopted, 60.0)
        return {"controller_back_after_s": back,
                "same_replicas_running_after_s": None if adopted is None or back is None
                else back + adopted}

    figures, _, _ = await kill_under_load(
        args, lambda: ray.kill(controller, no_restart=False), came_back)
    figures["replicas_after"] = sorted(running_replicas("Answer"))
    return figures


async def kill_the_membership(args: argparse.Namespace) -> dict[str, Any]:
    """Kill the membership actor (Ray restarts it; the controller republishes)."""
    import ray

    from llmserve.serve.ray.names import MEMBERSHIP_NAME, NAMESPACE

    membership = ray.get_actor(MEMBERSHIP_NAME, NAMESPACE)
    version = ray.get(membership.current_version.remote())

    def republished() -> bool:
        with contextlib.suppress(Exception):
            return bool(ray.get(membership.current_version.remote(), timeout=1) > version)
        return False

    async def came_back() -> dict[str, Any]:
        return {"snapshot_republished_after_s": await wait_until(republished, 60.0)}

    figures, _, _ = await kill_under_load(
        args, lambda: ray.kill(membership, no_restart=False), came_back)
    return figures


def start_cluster() -> Any:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 4, "num_gpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=4, num_gpus=2, resources={"worker": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    return cluster


def main() -> None:
    # Keep Ray's nodes on loopback: this benchmark runs on one machine.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--delay-s", type=float, default=0.05,
                        help="how long the deployment takes per request")
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--after-s", type=float, default=3.0,
                        help="load kept up after the replacement runs")
    parser.add_argument("--request-timeout-s", type=float, default=30.0)
    args = parser.parse_args()
    import ray

    cluster = start_cluster()
    try:
        app = Answer.options(num_replicas=args.replicas).bind()
        serve.run(app, name=APP, port=0, runtime="ray")
        result = {"replica_kill": asyncio.run(kill_a_replica(args))}
        serve.shutdown()
        serve.run(app, name=APP, port=0, runtime="ray")
        result["controller_kill"] = asyncio.run(kill_the_controller(args))
        result["membership_kill"] = asyncio.run(kill_the_membership(args))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    for name, figures in result.items():
        print(f"{name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items()))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_recovery.json").write_text(json.dumps(result, indent=2))


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
