"""Serving-core overhead.

1. Handle hop: µs per call (p50/p99) of ``await handle.remote()`` to a no-op deployment,
   from inside a replica (composition, on the serving loop) and from a plain thread
   (``.result()``).
2. HTTP: requests/s through the llmserve ingress for a no-op FastAPI route, written three
   ways: as a method of the ingress class (``class``), as a module-level function behind
   the same kind of ingress (``module``), and as a method that awaits one handle call to
   another deployment (``composed``); next to a bare FastAPI + uvicorn app doing the same
   work (``bare``), all measured in this run with the same load generator (``wrk`` when
   installed, else a Python client), alternating rounds; each one's ratio to bare, and
   each server's CPU time per request, which machine noise disturbs much less.

Run: ``.venv/bin/python -m benchmarks.core_overhead [--seconds 10] [--connections 32]
[--port-base 26000]`` (servers listen on ``port-base`` + 0..3; 0 picks free ports).
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


module_api = make_app()


@serve.deployment(max_ongoing_requests=1000)
@serve.ingress(module_api)
class ModuleRoutes:
    """The route is a module-level function; the class only carries the ingress."""


class_api = FastAPI()


@serve.deployment(max_ongoing_requests=1000)
@serve.ingress(class_api)
class ClassRoutes:
    @class_api.get("/")
    async def noop(self) -> dict[str, bool]:
        return {"ok": True}


@serve.deployment(max_ongoing_requests=1000)
class Answer:
    async def __call__(self) -> bool:
        return True


composed_api = FastAPI()


@serve.deployment(max_ongoing_requests=1000)
@serve.ingress(composed_api)
class Composed:
    def __init__(self, answer: serve.DeploymentHandle) -> None:
        self.answer = answer

    @composed_api.get("/")
    async def noop(self) -> dict[str, bool]:
        return {"ok": await self.answer.remote()}


SERVERS = ("bare", "class", "module", "composed")


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
    apps = {"class": ClassRoutes.bind, "module": ModuleRoutes.bind,
            "composed": lambda: Composed.bind(Answer.bind())}
    if kind in apps:
        serve.run(apps[kind](), port=port, blocking=True)
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


def measure_http(kind: str, seconds: int, connections: int, port: int) -> dict[str, float]:
    """Requests/s, and the server's CPU µs per request (steadier on a shared machine)."""
    port = port or free_port()
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


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per server: best req/s and least CPU per request over the rounds, and both as
    ratios to bare FastAPI + uvicorn (req/s ours / bare; CPU ours / bare)."""
    best = {kind: {"rps": max(r["rps"] for r in found),
                   "cpu_us_per_request": min(r["cpu_us_per_request"] for r in found)}
            for kind, found in runs.items()}
    bare = best["bare"]
    for found in best.values():
        found["rps_vs_bare"] = found["rps"] / bare["rps"]
        found["cpu_vs_bare"] = found["cpu_us_per_request"] / bare["cpu_us_per_request"]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port-base", type=int, default=0,
                        help="servers listen on PORT_BASE + 0..3 (0: free ports)")
    parser.add_argument("--only", nargs="+", choices=SERVERS, default=list(SERVERS),
                        help="servers to measure (bare is always measured)")
    parser.add_argument("--server", choices=SERVERS)
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.server:
        run_server(args.server, args.port)
        return
    handles = measure_handles(args.calls)
    kinds = ["bare"] + [k for k in args.only if k != "bare"]
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for _ in range(args.rounds):  # alternate, so machine noise hits all alike
        for kind in kinds:
            port = args.port_base + SERVERS.index(kind) if args.port_base else 0
            runs[kind].append(measure_http(kind, args.seconds, args.connections, port))
    best = summarize(runs)
    result = {"handle": handles,
              "http": {"best": best, "runs": runs, "connections": args.connections,
                       "seconds": args.seconds, "rounds": args.rounds,
                       "client": "wrk" if shutil.which("wrk") else "aiohttp"}}
    for label, key in (("in replica ", "in_replica_us"), ("from thread", "from_thread_us")):
        p50, p99 = handles[key]["p50"], handles[key]["p99"]
        print(f"handle hop, {label}: p50 {p50:.1f} us  p99 {p99:.1f} us")
    print(f"HTTP no-op route, best of {args.rounds} rounds, {args.connections} connections "
          f"({result['http']['client']}):")
    print(f"  {'server':<10} {'req/s':>8} {'vs bare':>8} {'CPU us/req':>11} {'vs bare':>8}")
    for kind, found in best.items():
        print(f"  {kind:<10} {found['rps']:>8.0f} {found['rps_vs_bare']:>7.2f}x "
              f"{found['cpu_us_per_request']:>11.1f} {found['cpu_vs_bare']:>7.2f}x")
    if "class" in best and "module" in best:
        print(f"  class-method routes vs module-level routes: "
              f"{best['class']['rps'] / best['module']['rps']:.2f}x req/s, "
              f"{best['class']['cpu_us_per_request'] / best['module']['cpu_us_per_request']:.2f}x "
              f"CPU per request")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "core_overhead.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
