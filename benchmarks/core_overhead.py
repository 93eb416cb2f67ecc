"""Serving-core overhead.

1. Handle hop: µs per call (p50/p99) of ``await handle.remote()`` to a no-op deployment,
   from inside a replica (composition, on the serving loop) and from a plain thread
   (``.result()``).
2. HTTP: requests/s through the llmserve ingress for a no-op FastAPI route next to a bare
   FastAPI + uvicorn app doing the same work, both measured in this run with the same
   load generator (``wrk`` when installed, else a Python client), and their ratio; also
   each server's CPU time per request, which machine noise disturbs much less.

Run: ``.venv/bin/python -m benchmarks.core_overhead [--seconds 10] [--connections 32]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from benchmarks.cluster_procs import wait_http_ok
from llmserve import serve

RESULTS = Path(__file__).parent / "results"


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def noop() -> dict[str, bool]:
        return {"ok": True}

    return app


api = make_app()


@serve.deployment(max_ongoing_requests=1000)
@serve.ingress(api)
class HttpNoOp:
    pass


@serve.deployment(max_ongoing_requests=1000)
class NoOp:
    async def __call__(self) -> None:
        return None


@serve.deployment
class Driver:
    def __init__(self, target: serve.DeploymentHandle) -> None:
        self.target = target

    async def measure(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter_ns()
            await self.target.remote()
            times.append((time.perf_counter_ns() - start) / 1000)
        return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def measure_handles(n: int, runtime: str = "local",
                    options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Handle hops to a no-op deployment; ``options`` apply to both deployments."""
    opts = options or {}
    app = Driver.options(**opts).bind(NoOp.options(**opts).bind())
    driver = serve.run(app, route_prefix=None, name="bench", runtime=runtime)
    driver.measure.remote(200).result()  # warm up
    in_loop = driver.measure.remote(n).result()
    noop = serve.get_deployment_handle("NoOp", "bench")
    thread = []
    for _ in range(n):
        start = time.perf_counter_ns()
        noop.remote().result()
        thread.append((time.perf_counter_ns() - start) / 1000)
    serve.shutdown()
    return {
        "calls": n,
        "in_replica_us": {"p50": percentile(in_loop, 50), "p99": percentile(in_loop, 99)},
        "from_thread_us": {"p50": percentile(thread, 50), "p99": percentile(thread, 99)},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_server(kind: str, port: int) -> None:
    if kind == "llmserve":
        serve.run(HttpNoOp.bind(), port=port, blocking=True)
    else:
        import uvicorn

        uvicorn.run(make_app(), host="127.0.0.1", port=port, log_level="warning",
                    access_log=False)


def wait_ready(port: int, timeout_s: float = 90) -> None:
    wait_http_ok(f"http://127.0.0.1:{port}/", timeout_s, poll_timeout_s=1, poll_s=0.1)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(url: str, seconds: int, connections: int) -> tuple[float, int]:
    """Requests/s and requests completed."""
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
                             capture_output=True, text=True, check=True).stdout
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        done = re.search(r"(\d+) requests in", out)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if errors:
            raise RuntimeError(f"{errors.group(1)} failed responses from {url}")
        assert match and done, out
        return float(match.group(1)), int(done.group(1))
    rps = asyncio.run(_python_load(url, seconds, connections))
    return rps, int(rps * seconds)


async def _python_load(url: str, seconds: int, connections: int) -> float:
    import aiohttp

    done = 0
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}")
            done += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    return done / seconds


def measure_http(kind: str, seconds: int, connections: int) -> dict[str, float]:
    """Requests/s, and the server's CPU µs per request (steadier on a shared machine)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.core_overhead", "--server", kind,
                             "--port", str(port)],
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
    try:
        wait_ready(port)
        load(f"http://127.0.0.1:{port}/", 2, connections)  # warm up
        cpu_before = process_cpu_s(proc.pid)
        rps, done = load(f"http://127.0.0.1:{port}/", seconds, connections)
        cpu_us = (process_cpu_s(proc.pid) - cpu_before) / done * 1e6
        return {"rps": rps, "cpu_us_per_request": cpu_us}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--server", choices=["llmserve", "bare"])
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.server:
        run_server(args.server, args.port)
        return
    handles = measure_handles(args.calls)
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "llmserve": []}
    for _ in range(args.rounds):  # alternate, so machine noise hits both alike
        for kind, found in runs.items():
            found.append(measure_http(kind, args.seconds, args.connections))
    bare = max(r["rps"] for r in runs["bare"])
    ours = max(r["rps"] for r in runs["llmserve"])
    bare_cpu = min(r["cpu_us_per_request"] for r in runs["bare"])
    ours_cpu = min(r["cpu_us_per_request"] for r in runs["llmserve"])
    result = {"handle": handles,
              "http": {"bare_uvicorn_rps": bare, "llmserve_rps": ours, "ratio": ours / bare,
                       "bare_cpu_us_per_request": bare_cpu,
                       "llmserve_cpu_us_per_request": ours_cpu,
                       "cpu_ratio": bare_cpu / ours_cpu, "runs": runs,
                       "connections": args.connections, "seconds": args.seconds,
                       "client": "wrk" if shutil.which("wrk") else "aiohttp"}}
    for label, key in (("in replica ", "in_replica_us"), ("from thread", "from_thread_us")):
        p50, p99 = handles[key]["p50"], handles[key]["p99"]
        print(f"handle hop, {label}: p50 {p50:.1f} us  p99 {p99:.1f} us")
    print(f"HTTP no-op: bare uvicorn {bare:.0f} req/s, llmserve {ours:.0f} req/s, "
          f"ratio {ours / bare:.2f} (best of {args.rounds})")
    print(f"HTTP no-op server CPU: bare {bare_cpu:.1f} us/request, llmserve {ours_cpu:.1f} "
          f"us/request, requests per CPU-second ratio {bare_cpu / ours_cpu:.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "core_overhead.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
