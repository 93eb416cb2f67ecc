"""How long a ``/metrics`` scrape of the gateway takes with many engine replicas.

Target: <= 5 ms with 64 replicas. Two measurements, each against a baseline run in the
same script:

1. in process: rendering the gateway's exposition (what a scrape costs the gateway's
   event loop) with 64 replicas, against 1 replica;
2. over HTTP: a real gateway (``llmserve serve --worker-urls``) in front of 64 simulated
   replicas, after some traffic; ``GET /metrics`` against ``GET /health`` (the same HTTP
   path with a trivial answer).

Run (ports PORT_BASE..PORT_BASE+64)::

    flock /tmp/bench.lock python -m benchmarks.metrics_scrape --port-base 24000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks.cluster_procs import gateway, sim_cluster
from llmserve.openai.metrics import IngressMetrics
from llmserve.openai.pool import make_pool
from llmserve.openai.relay import Outcome
from routing.decision import RoutingDecision


def timings_ms(action: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(ordered):.3f} ms, p99 {p99:.3f} ms"


def in_process_metrics(replicas: int) -> IngressMetrics:
    """The gateway's metrics after traffic on every route, status and routing outcome."""
    pool = make_pool("sim", "sim", {"policy": "round_robin"},
                     urls=[f"http://127.0.0.1:{30000 + i}" for i in range(replicas)])
    metrics = IngressMetrics({"sim": pool})
    for i in range(2000):
        outcome = Outcome(status=200, started_s=0.0, first_chunk_s=0.01 * (i % 50),
                          usage={"prompt_tokens": 100, "completion_tokens": 20})
        metrics.record("sim", "/v1/chat/completions", outcome, 1.0, streamed=i % 2 == 0)
        metrics.record_routing("sim", "prefix_aware",
                               RoutingDecision("hit", 64 * (i % 100)))
    for status in (400, 401, 404, 413, 429, 503):
        metrics.record_local("sim", "/v1/completions", status)
    return metrics


async def drive(url: str, requests: int, concurrency: int = 16) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        async def worker(n: int) -> None:
            for i in range(n):
                stream = i % 2 == 0
                body = {"model": "sim", "prompt": f"request {i} " * 20, "max_tokens": 4,
                        "stream": stream}
                response = await client.post(f"{url}/v1/completions", json=body)
                response.raise_for_status()

        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))


def over_http(args: argparse.Namespace, workdir: Path) -> None:
    sim_port = args.port_base + 1
    with sim_cluster(None, args.replicas, sim_port, "tiny-cpu", 1.0, workdir / "sim.log",
                     ["--served-model-name", "sim"]) as urls, \
            gateway(urls, "prefix_aware", args.port_base, workdir / "gateway.log") as url:
        asyncio.run(drive(url, args.requests))
        with httpx.Client(timeout=10) as client:
            text = client.get(f"{url}/metrics").text
            series = sum(1 for line in text.splitlines() if line and line[0] != "#")
            replicas = len({line.split('replica="')[1].split('"')[0]
                            for line in text.splitlines() if 'replica="' in line})
            health = timings_ms(lambda: client.get(f"{url}/health"), args.scrapes)
            scrape = timings_ms(lambda: client.get(f"{url}/metrics"), args.scrapes)
    print(f"over HTTP, {replicas} replicas, {series} series, {args.scrapes} scrapes each:")
    print(f"  GET /health  (baseline): {summary(health)}")
    print(f"  GET /metrics           : {summary(scrape)}")
    print(f"  ratio of medians /metrics : /health = "
          f"{statistics.median(scrape) / statistics.median(health):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port-base", type=int, required=True,
                        help="the gateway's port; replicas use the next --replicas ports")
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--skip-http", action="store_true", help="in-process only")
    args = parser.parse_args()
    one = in_process_metrics(1)
    many = in_process_metrics(args.replicas)
    base = timings_ms(one.exposition, args.scrapes)
    full = timings_ms(many.exposition, args.scrapes)
    print(f"in process, rendering the exposition ({args.scrapes} renders each):")
    print(f"  1 replica (baseline): {summary(base)}")
    print(f"  {args.replicas} replicas         : {summary(full)}")
    print(f"  ratio of medians {args.replicas} : 1 = "
          f"{statistics.median(full) / statistics.median(base):.2f}")
    if not args.skip_http:
        with tempfile.TemporaryDirectory() as workdir:
            over_http(args, Path(workdir))
    print("(shared 2-core machine: other work may have run during the measurement)")


if __name__ == "__main__":
    main()
