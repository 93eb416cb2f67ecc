"""Serving-core overhead on the Ray runtime next to the local runtime, and recovery.

1. Handle hop (µs, p50/p99) to a no-op deployment, from inside a replica and from a plain
   thread, on ``runtime="local"`` and ``runtime="ray"`` (a local Ray started here, or
   ``RAY_ADDRESS``).
2. HTTP no-op route: requests/s through the proxy, local and ray, same load generator.
3. Recovery: a closed-loop load on a 2-replica deployment; one replica actor is killed;
   seconds until a replacement runs, and how many requests failed (each with
   ``ReplicaDiedError``) or hung (none expected).

Run: ``.venv/bin/python -m benchmarks.ray_overhead [--calls 2000] [--seconds 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.core_overhead import (
    ModuleRoutes,
    free_port,
    load,
    measure_handles,
    wait_ready,
)
from llmserve import serve

RESULTS = Path(__file__).parent / "results"
NO_CPU = {"ray_actor_options": {"num_cpus": 0}}


@serve.deployment(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class Work:
    async def __call__(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)

    async def me_and_id(self) -> tuple[Any, str]:
        import ray

        return (ray.get_runtime_context().current_actor,
                serve.get_replica_context().replica_id)


def measure_http(runtime: str, seconds: int, connections: int) -> float:
    port = free_port()
    root = Path(__file__).parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.ray_overhead", "--server", runtime,
         "--port", str(port)], cwd=root, env=dict(os.environ, PYTHONPATH=str(root)))
    try:
        wait_ready(port, timeout_s=90)
        load(f"http://127.0.0.1:{port}/", 2, connections)  # warm up
        return load(f"http://127.0.0.1:{port}/", seconds, connections)[0]
    finally:
        proc.terminate()
        proc.wait(60)


def measure_recovery(clients: int, seconds: float) -> dict[str, Any]:
    import ray

    from llmserve.serve.exceptions import ReplicaDiedError

    handle = serve.run(Work.options(num_replicas=2).bind(), route_prefix=None,
                       name="recovery", runtime="ray")
    victim, victim_id = handle.me_and_id.remote().result()
    counts = {"ok": 0, "died": 0, "other": 0, "hung": 0}

    def running_ids() -> set[str]:
        deployment = serve.status().applications["recovery"].deployments["Work"]
        return {r.replica_id for r in deployment.replicas if r.state == "RUNNING"}

    async def client(stop_at: float) -> None:
        while time.monotonic() < stop_at:
            try:
                await asyncio.wait_for(handle.remote(0.05), 30)
                counts["ok"] += 1
            except ReplicaDiedError:
                counts["died"] += 1
            except TimeoutError:
                counts["hung"] += 1
            except Exception:
                counts["other"] += 1

    async def run() -> float:
        stop_at = time.monotonic() + seconds
        tasks = [asyncio.create_task(client(stop_at)) for _ in range(clients)]
        await asyncio.sleep(seconds / 3)
        killed_at = time.monotonic()
        ray.kill(victim)
        recovered_s = float("nan")
        while time.monotonic() - killed_at < 30:
            ids = await asyncio.to_thread(running_ids)
            if len(ids) == 2 and victim_id not in ids:
                recovered_s = time.monotonic() - killed_at
                break
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
        return recovered_s

    recovered_s = asyncio.run(run())
    serve.shutdown()
    return {"clients": clients, "seconds": seconds, "replaced_after_s": recovered_s, **counts}


def main() -> None:
    # Keep Ray's nodes (and engines) on loopback: this benchmark runs on one machine.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--server", choices=["local", "ray"])
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.server:
        # on Ray, the driver's proxy alone (no node proxy sharing its port)
        serve.run(ModuleRoutes.options(**NO_CPU).bind(), port=args.port, runtime=args.server,
                  proxy_location="Disabled" if args.server == "ray" else None,
                  blocking=True)
        return
    result: dict[str, Any] = {"handle": {}, "http_rps": {}}
    for runtime in ("local", "ray"):
        result["handle"][runtime] = measure_handles(args.calls, runtime, NO_CPU)
        result["http_rps"][runtime] = measure_http(runtime, args.seconds, args.connections)
    result["recovery"] = measure_recovery(clients=16, seconds=6)
    result["http_client"] = "wrk" if shutil.which("wrk") else "aiohttp"
    for runtime, hops in result["handle"].items():
        for key in ("in_replica_us", "from_thread_us"):
            print(f"{runtime:5} handle hop {key[:-3]:12}: p50 {hops[key]['p50']:8.1f} us  "
                  f"p99 {hops[key]['p99']:8.1f} us")
        print(f"{runtime:5} HTTP no-op: {result['http_rps'][runtime]:.0f} req/s")
    print(f"recovery: {result['recovery']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_overhead.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
