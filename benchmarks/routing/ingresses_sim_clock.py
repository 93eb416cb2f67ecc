"""Several independent ingresses in front of one simulated cluster, on the simulator's clock.

The same question as ``ingresses.py`` (does prefix routing hold when N routers that do not
talk to each other share the traffic?) without real time: the 8 replicas are the
simulator's engines (``engines.sim``: vLLM's scheduler, exact prefix cache and KV-cache
events, profile ``llama-3.1-8b-h100``), the N ingresses are N instances of the gateway's
routing path (one :class:`routing.Dispatcher` and policy each, candidates built as the
gateway's pool builds them, engine stats re-read every ``--stats-refresh-s``), and all of
it runs in one process on :mod:`benchmarks.routing.virtual_time`'s loop, whose clock is
the simulated one: a run costs the Python it executes, and a machine shared with other
work slows it down without changing a number. Each replica's KV events are encoded to
vLLM's wire format (``engines.kv_events``), delivered to every event-fed ingress after
``--event-lag-ms``, decoded and applied by the gateway's own code
(``llmserve.openai.kv_events.apply_batch``) into that ingress's own view. What this leaves
out: HTTP, tokenisation (prompts are token ids), ZMQ. Requests go to the ingresses in turn
(round-robin, a multi-turn session's turns too: a load balancer without affinity).

Routers: ``events`` (``prefix_aware`` + the engines' KV events), ``approximate``
(``prefix_aware`` alone: each ingress guesses from what it sent), and ``oracle`` (one
ingress that pins each group to a replica, groups spread evenly: the hit-rate reference).
vllm-router runs only in real time: ``ingresses.py --routers cache_aware``.

Workloads (``run.py``'s shapes, prompts of random token ids): ``shared-prefix`` (32 groups
of a 2048-token system prompt + 128-token questions, 2048 blocks per replica),
``multi-turn`` (sessions of 4 turns, a 1024-token system prompt each, 128-token user
turns, the conversation re-sent each turn, 1 s mean think time), ``tight-kv``
(shared-prefix with ``--tight-kv-blocks`` per replica: the groups' prefixes just fit the
cluster's cache). 64 output tokens each, end of sequence ignored.

Run: ``.venv/bin/python -m benchmarks.routing.ingresses_sim_clock`` (about 4 minutes a seed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.routing import virtual_time
from benchmarks.routing.oracle import GroupOraclePolicy
from engines import kv_events as wire
from engines.sim.engine import EngineConfig, SimEngine
from engines.sim.event_publisher import to_wire
from engines.sim.kv_cache import CacheEvent
from engines.sim.metrics import EngineMetrics
from engines.sim.profiles import get_profile
from engines.sim.request import SamplingSpec, SimRequest
from llmserve.openai.kv_events import apply_batch
from routing import Candidate, RouteRequest, make_policy
from routing.dispatch import Dispatcher
from routing.kv_cache_view import ClusterCacheView
from routing.policy import RoutingPolicy

MODEL = "model"
BLOCK_SIZE = 16
ROUTERS = ("events", "approximate")
WORKLOADS = ("shared-prefix", "multi-turn", "tight-kv")
RESULT_DIR = Path(__file__).parent / "results" / "ingresses-sim-clock"


@dataclass(frozen=True)
class Settings:
    requests: int = 256
    qps: float = 32.0
    kv_blocks: int = 2048
    tight_kv_blocks: int = 600
    replicas: int = 8
    event_lag_s: float = 0.005
    stats_refresh_s: float = 0.5
    output_len: int = 64
    seed: int = 0
    routing: str = "{}"  # extra prefix_aware options, JSON


class Replica:
    """One simulated engine; its KV events go, encoded, to every subscriber."""

    def __init__(self, name: str, config: EngineConfig, clock: virtual_time.LoopClock) -> None:
        self.name = name
        self.subscribers: list[Callable[[bytes], None]] = []
        self.engine = SimEngine(config, clock, EngineMetrics(MODEL), self._publish)
        self._clock = clock

    def _publish(self, events: Sequence[CacheEvent]) -> None:
        if not events or not self.subscribers:
            return
        batch = wire.KVEventBatch(self._clock.now(), [to_wire(e) for e in events], 0)
        payload = wire.encode_batch(batch)
        for deliver in self.subscribers:
            deliver(payload)

    def stats(self) -> dict[str, float]:
        engine = self.engine
        return {"num_running": float(engine.num_running),
                "num_waiting": float(engine.num_waiting),
                "kv_cache_usage": engine.kv_cache.usage}


class Ingress:
    """One gateway's routing path: its own policy, in-flight counts, stats and view."""

    def __init__(self, policy: RoutingPolicy, replicas: Sequence[Replica], settings: Settings,
                 events: bool, phase_s: float) -> None:
        self.replicas = {r.name: r for r in replicas}
        self.policy = policy
        self.dispatcher = Dispatcher(policy, list(self.replicas))
        self.stats: dict[str, dict[str, float]] = {name: {} for name in self.replicas}
        self.settings = settings
        self._loop = asyncio.get_running_loop()
        self.view: ClusterCacheView | None = None
        if events:
            self.view = ClusterCacheView(BLOCK_SIZE, clock=self._loop.time)
            policy.use_kv_view(self.view)  # type: ignore[attr-defined]
            for replica in replicas:
                self.view.set_live(replica.name, True)
                replica.subscribers.append(self._subscriber(replica.name))
        self._loop.call_later(phase_s, self._refresh)

    def _subscriber(self, name: str) -> Callable[[bytes], None]:
        def deliver(payload: bytes) -> None:
            self._loop.call_later(self.settings.event_lag_s, self._apply, name, payload)
        return deliver

    def _apply(self, name: str, payload: bytes) -> None:
        assert self.view is not None
        apply_batch(self.view, MODEL, name, wire.decode_batch(payload))

    def _refresh(self) -> None:
        for name, replica in self.replicas.items():
            self.stats[name] = replica.stats()
        self._loop.call_later(self.settings.stats_refresh_s, self._refresh)

    async def complete(self, request_id: str, tokens: tuple[int, ...],
                       output_plan: tuple[int, ...]) -> tuple[float, tuple[int, ...]]:
        """Route and run one request: its TTFT (simulated s) and its output tokens."""
        route = RouteRequest(request_id, MODEL, prompt_token_ids=tokens)
        candidates = [Candidate(name, self.dispatcher.in_flight_of(name), 0, frozenset(),
                                self.stats[name]) for name in self.replicas]
        chosen = self.dispatcher.choose(route, candidates)
        assert chosen is not None
        request = SimRequest(request_id, tokens, SamplingSpec(len(output_plan), ignore_eos=True),
                             output_plan, BLOCK_SIZE)
        start_s = self._loop.time()
        ttft_s = None
        try:
            async for item in self.replicas[chosen].engine.generate(request):
                if ttft_s is None:
                    ttft_s = item.time_s - start_s
                    self.dispatcher.first_token(route, chosen)
        finally:
            self.dispatcher.finished(route, chosen)
        assert ttft_s is not None
        return ttft_s, tuple(request.output_token_ids)


def make_ingresses(kind: str, count: int, replicas: Sequence[Replica], settings: Settings,
                   rng: random.Random) -> list[Ingress]:
    options = json.loads(settings.routing)
    ingresses = []
    for i in range(count):
        policy: RoutingPolicy
        if kind == "oracle":
            policy = GroupOraclePolicy(key_tokens=256, block_size=BLOCK_SIZE)
        else:
            policy = make_policy("prefix_aware", block_size=BLOCK_SIZE,
                                 rng=random.Random(settings.seed * 100 + i), **options)
        ingresses.append(Ingress(policy, replicas, settings, kind == "events",
                                 rng.uniform(0, settings.stats_refresh_s)))
    return ingresses


class Load:
    """Sends the workload's requests to the ingresses in turn and records their TTFTs."""

    def __init__(self, ingresses: Sequence[Ingress], settings: Settings) -> None:
        self.ingresses = ingresses
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.ttfts_s: list[float] = []
        self._sent = 0

    def tokens(self, n: int) -> tuple[int, ...]:
        return tuple(self.rng.randrange(128_000) for _ in range(n))

    async def one(self, tokens: tuple[int, ...]) -> tuple[int, ...]:
        ingress = self.ingresses[self._sent % len(self.ingresses)]
        self._sent += 1
        ttft_s, output = await ingress.complete(f"req-{self._sent}", tokens,
                                                self.tokens(self.settings.output_len))
        self.ttfts_s.append(ttft_s)
        return output

    async def shared_prefix(self, groups: int = 32, system: int = 2048,
                            question: int = 128) -> None:
        prefixes = [self.tokens(system) for _ in range(groups)]
        order = [g % groups for g in range(self.settings.requests)]
        self.rng.shuffle(order)
        tasks = []
        for group in order:
            await asyncio.sleep(self.rng.expovariate(self.settings.qps))
            prompt = prefixes[group] + self.tokens(question)
            tasks.append(asyncio.ensure_future(self.one(prompt)))
        await asyncio.gather(*tasks)

    async def multi_turn(self, turns: int = 4, system: int = 1024, user: int = 128,
                         think_s: float = 1.0) -> None:
        async def session() -> None:
            history = self.tokens(system)
            for _ in range(turns):
                prompt = history + self.tokens(user)
                history = prompt + await self.one(prompt)
                await asyncio.sleep(self.rng.expovariate(1.0 / think_s))

        tasks = []
        for _ in range(max(1, self.settings.requests // turns)):
            await asyncio.sleep(self.rng.expovariate(self.settings.qps / turns))
            tasks.append(asyncio.ensure_future(session()))
        await asyncio.gather(*tasks)


async def simulate(workload: str, kind: str, count: int, settings: Settings) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    clock = virtual_time.LoopClock(loop)
    blocks = settings.tight_kv_blocks if workload == "tight-kv" else settings.kv_blocks
    config = EngineConfig(get_profile("llama-3.1-8b-h100"), num_blocks=blocks,
                          block_size=BLOCK_SIZE)
    replicas = [Replica(f"replica-{k}", config, clock) for k in range(settings.replicas)]
    for replica in replicas:
        replica.engine.start()
    rng = random.Random(settings.seed + 7)
    load = Load(make_ingresses(kind, count, replicas, settings, rng), settings)
    start_s = loop.time()
    if workload == "multi-turn":
        await load.multi_turn()
    else:
        await load.shared_prefix()
    duration_s = loop.time() - start_s
    for replica in replicas:
        await replica.engine.stop()
    queries = sum(r.engine.kv_cache.stats.queries for r in replicas)
    hits = sum(r.engine.kv_cache.stats.hits for r in replicas)
    ttfts = sorted(load.ttfts_s)
    return {"workload": workload, "router": kind, "ingresses": count,
            "completed": len(ttfts), "prefix_cache_hit_rate": hits / max(1, queries),
            "median_ttft_ms": 1000 * statistics.median(ttfts),
            "p90_ttft_ms": 1000 * ttfts[int(0.9 * (len(ttfts) - 1))],
            "p99_ttft_ms": 1000 * ttfts[int(0.99 * (len(ttfts) - 1))],
            "simulated_s": duration_s}


def table(rows: Sequence[dict[str, Any]]) -> str:
    oracle = {r["workload"]: r["prefix_cache_hit_rate"] for r in rows if r["router"] == "oracle"}
    single = {(r["workload"], r["router"]): r["p90_ttft_ms"] for r in rows
              if r["ingresses"] == 1}
    lines = ["| workload | router | ingresses | done | hit rate | / oracle | TTFT p50 ms | "
             "TTFT p90 ms | p90 / 1 ingress |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hit, p90 = r["prefix_cache_hit_rate"], r["p90_ttft_ms"]
        ref, base = oracle.get(r["workload"]), single.get((r["workload"], r["router"]))
        cells = [r["workload"], r["router"], str(r["ingresses"]), str(r["completed"]),
                 f"{hit:.3f}", f"{hit / ref:.2f}" if ref else "-",
                 f"{r['median_ttft_ms']:.0f}", f"{p90:.0f}",
                 f"{p90 / base:.2f}" if base else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seeds_table(rows: Sequence[dict[str, Any]]) -> str:
    """Over seeds: each run's hit rate against its seed's oracle and its TTFT p90 against
    its seed's single-ingress run of the same router, as min-max (and the mean hit rate)."""
    oracle = {(r["seed"], r["workload"]): r["prefix_cache_hit_rate"] for r in rows
              if r["router"] == "oracle"}
    single = {(r["seed"], r["workload"], r["router"]): r["p90_ttft_ms"] for r in rows
              if r["ingresses"] == 1}
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        runs.setdefault((r["workload"], r["router"], r["ingresses"]), []).append(r)
    lines = ["| workload | router | ingresses | seeds | hit rate (mean) | / oracle (min-max) | "
             "TTFT p90 ms (min-max) | p90 / 1 ingress (min-max) |",
             "|---|---|---|---|---|---|---|---|"]

    def span(values: Sequence[float], fmt: str) -> str:
        if not values:
            return "-"
        return f"{fmt.format(min(values))}-{fmt.format(max(values))}"

    for (workload, router, count), group in runs.items():
        hits = [r["prefix_cache_hit_rate"] for r in group]
        vs_oracle = [r["prefix_cache_hit_rate"] / oracle[(r["seed"], workload)] for r in group
                     if (r["seed"], workload) in oracle]
        p90s = [r["p90_ttft_ms"] for r in group]
        vs_single = [r["p90_ttft_ms"] / single[(r["seed"], workload, router)] for r in group
                     if (r["seed"], workload, router) in single]
        lines.append(f"| {workload} | {router} | {count} | {len(group)} | "
                     f"{statistics.mean(hits):.3f} | {span(vs_oracle, '{:.2f}')} | "
                     f"{span(p90s, '{:.0f}')} | {span(vs_single, '{:.2f}')} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing.ingresses_sim_clock",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ingresses", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=ROUTERS)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--result-dir", type=Path, default=RESULT_DIR)
    defaults = Settings()
    for name in ("requests", "qps", "kv_blocks", "tight_kv_blocks", "replicas",
                 "stats_refresh_s", "output_len"):
        value = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--event-lag-ms", type=float, default=defaults.event_lag_s * 1000,
                        help="from an engine step to its events applied in every ingress")
    parser.add_argument("--routing", default="{}",
                        help="extra prefix_aware options (JSON) for events and approximate")
    args = parser.parse_args(argv)
    settings = Settings(requests=args.requests, qps=args.qps, kv_blocks=args.kv_blocks,
                        tight_kv_blocks=args.tight_kv_blocks, replicas=args.replicas,
                        event_lag_s=args.event_lag_ms / 1000,
                        stats_refresh_s=args.stats_refresh_s, output_len=args.output_len,
                        routing=args.routing)
    return args, settings


def main(argv: Sequence[str] | None = None) -> int:
    args, settings = parse_args(argv)
    args.result_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        seeded = Settings(**{**settings.__dict__, "seed": seed})
        for workload in args.workloads:
            runs = [("oracle", 1)] + [(k, n) for k in args.routers for n in args.ingresses]
            for kind, count in runs:
                row = virtual_time.run(simulate(workload, kind, count, seeded))
                row["seed"] = seed
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = table(rows) + "\n" + seeds_table(rows)
    print(summary)
    (args.result_dir / "summary.md").write_text(summary)
    (args.result_dir / "summary.json").write_text(json.dumps(
        {"settings": settings.__dict__, "seeds": args.seeds, "rows": rows}, indent=1))
    print(f"{len(rows)} runs in {time.monotonic() - started:.0f} s of wall time "
          f"(times in the table are simulated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
