"""P/D disaggregation against aggregated serving in simulated time only (no processes).

The same engine core as the simulator's servers (``engines.sim``: its scheduler with
chunked prefill, KV cache, step-time model and KV-transfer time of profile
``llama-3.1-8b-h100``) and the gateway's routing policies (``prefix_aware`` for the
aggregated cluster and the prefill pool, ``least_loaded`` for the decode pool), driven by
a discrete-event loop on one simulated clock: results do not depend on the machine's
load, and a sweep takes a minute. The HTTP path is left out (the gateway adds well under a
millisecond per request). ``benchmarks/pd/run.py`` runs the same comparison through real
gateways and simulated engine servers.

The flow is vLLM's: the prefill engine computes the prompt and one token (``max_tokens``
1); the decode engine then pulls the prompt's KV (``RemotePrefill``: the profile's link,
50 GB/s per GPU, RDMA-class, plus 1 ms) and generates the whole answer. TTFT is the
decode engine's first token minus the arrival; TPOT is (last - first token) / (tokens - 1).

Run: ``.venv/bin/python -m benchmarks.pd.virtual`` (writes ``results/virtual/``).
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.sim.engine import plan_duration_s
from engines.sim.kv_cache import KVCache
from engines.sim.profiles import Profile, get_profile
from engines.sim.request import RemotePrefill, RequestStatus, SamplingSpec, SimRequest
from engines.sim.scheduler import Scheduler, SchedulerConfig, StepPlan
from engines.sim.time_model import kv_transfer_time_s
from routing import Candidate, RouteRequest, RoutingPolicy, make_policy

RESULT_DIR = Path(__file__).parent / "results" / "virtual"
PROFILE = "llama-3.1-8b-h100"
BLOCK_SIZE = 16
SLO_S = {"ttft": 1.0, "tpot": 0.050}
ATTAINMENT = 0.9
WORKLOADS = {"long": (4096, 8192), "mixed": (128, 4096)}  # prompt tokens, uniform
OUTPUT_LEN = 256
RATES = {"long": (8.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0, 36.0),
         "mixed": (16.0, 24.0, 32.0, 40.0, 48.0, 56.0, 64.0)}
SPLITS = ("agg", "2:6", "3:5", "4:4", "5:3")
MIN_REQUESTS = 150


@dataclass(frozen=True)
class Arrival:
    request_id: str
    at_s: float
    prompt: tuple[int, ...]
    output_len: int


@dataclass
class Engine:
    name: str
    scheduler: Scheduler
    profile: Profile
    busy: bool = False
    ongoing: int = 0  # what the gateway routed here and has not seen finish

    def candidate(self) -> Candidate:
        stats = {"num_running": float(self.scheduler.num_running),
                 "num_waiting": float(self.scheduler.num_waiting)}
        return Candidate(self.name, self.ongoing, 0, frozenset(), stats)


@dataclass
class Timing:
    arrival_s: float
    output_len: int
    first_s: float | None = None
    last_s: float | None = None


@dataclass
class Pool:
    engines: dict[str, Engine]
    policy: RoutingPolicy

    def route(self, request: RouteRequest) -> Engine:
        ranked = self.policy.choose(request, [e.candidate() for e in self.engines.values()])
        engine = self.engines[ranked[0].replica_id]
        engine.ongoing += 1
        self.policy.on_routed(request, engine.name)
        return engine


@dataclass(order=True)
class Event:
    at_s: float
    seq: int
    kind: str = field(compare=False)
    data: Any = field(compare=False)


class Simulation:
    def __init__(self, split: str, replicas: int, profile: Profile) -> None:
        self.profile = profile
        self.events: list[Event] = []
        self.seq = 0
        self.timings: dict[str, Timing] = {}
        self.routes: dict[str, RouteRequest] = {}
        self.pending_decode: dict[str, Arrival] = {}  # prefill running, decode to come
        if split == "agg":
            self.prefill = None
            self.decode = self._pool("agg", replicas, "prefix_aware")
        else:
            num_prefill, num_decode = (int(x) for x in split.split(":"))
            self.prefill = self._pool("p", num_prefill, "prefix_aware")
            self.decode = self._pool("d", num_decode, "least_loaded")

    def _pool(self, prefix: str, size: int, policy: str) -> Pool:
        profile = self.profile
        config = SchedulerConfig(max_num_seqs=profile.max_num_seqs,
                                 max_num_batched_tokens=profile.max_num_batched_tokens,
                                 max_model_len=16_384)
        engines = {}
        for i in range(size):
            cache = KVCache(profile.kv_blocks, BLOCK_SIZE, True)
            scheduler = Scheduler(config, cache, lambda n: kv_transfer_time_s(profile, n))
            engines[f"{prefix}{i}"] = Engine(f"{prefix}{i}", scheduler, profile)
        kwargs: dict[str, Any] = {"block_size": BLOCK_SIZE} if policy == "prefix_aware" else {}
        return Pool(engines, make_policy(policy, **kwargs))

    # ---- events ----------------------------------------------------------------------
    def push(self, at_s: float, kind: str, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, Event(at_s, self.seq, kind, data))

    def run(self, arrivals: Sequence[Arrival]) -> dict[str, Timing]:
        for arrival in arrivals:
            self.push(arrival.at_s, "arrive", arrival)
        while self.events:
            event = heapq.heappop(self.events)
            now = event.at_s
            if event.kind == "arrive":
                self._arrive(event.data, now)
            elif event.kind == "step":
                engine, plan = event.data
                self._step_done(engine, plan, now)
            else:  # "wake": a KV transfer landed
                self._kick(event.data, now)
        return self.timings

    def _arrive(self, arrival: Arrival, now: float) -> None:
        self.timings[arrival.request_id] = Timing(now, arrival.output_len)
        route = RouteRequest(arrival.request_id, "m", prompt_token_ids=arrival.prompt)
        self.routes[arrival.request_id] = route
        if self.prefill is None:
            self._submit(self.decode.route(route), arrival, arrival.output_len, None, now)
            return
        self.pending_decode[arrival.request_id] = arrival
        self._submit(self.prefill.route(route), arrival, 1, None, now)

    def _submit(self, engine: Engine, arrival: Arrival, max_tokens: int,
                remote: RemotePrefill | None, now: float) -> None:
        request = SimRequest(arrival.request_id, arrival.prompt,
                             SamplingSpec(max_tokens=max_tokens, ignore_eos=True),
                             tuple(range(1, max_tokens + 1)), BLOCK_SIZE, arrival_s=now,
                             remote_prefill=remote)
        engine.scheduler.add(request)
        self._kick(engine, now)

    def _kick(self, engine: Engine, now: float) -> None:
        if engine.busy or not engine.scheduler.has_work:
            return
        plan = engine.scheduler.schedule(now)
        if plan.chunks:
            engine.busy = True
            self.push(now + plan_duration_s(self.profile, plan), "step", (engine, plan))
            return
        ready_s = engine.scheduler.next_kv_ready_s()
        if ready_s is not None:
            self.push(max(ready_s, now), "wake", engine)

    def _step_done(self, engine: Engine, plan: StepPlan, now: float) -> None:
        engine.busy = False
        in_prefill_pool = self.prefill is not None and engine.name in self.prefill.engines
        pool = self.prefill if in_prefill_pool and self.prefill else self.decode
        for output in engine.scheduler.update(plan):
            rid = output.request_id
            route = self.routes[rid]
            if in_prefill_pool:
                if output.finish is not None:  # the prompt's KV is ready: hand it off
                    engine.ongoing -= 1
                    pool.policy.on_finished(route, engine.name)
                    arrival = self.pending_decode.pop(rid)
                    remote = RemotePrefill(len(arrival.prompt), {"remote_engine": engine.name})
                    self._submit(self.decode.route(route), arrival, arrival.output_len,
                                 remote, now)
                continue
            timing = self.timings[rid]
            if timing.first_s is None:
                timing.first_s = now
                pool.policy.on_first_token(route, engine.name)
            timing.last_s = now
            if output.finish is not None:
                engine.ongoing -= 1
                pool.policy.on_finished(route, engine.name)
                assert output.finish is RequestStatus.FINISHED_LENGTH
        self._kick(engine, now)


def arrivals(name: str, rate: float, count: int, seed: int) -> list[Arrival]:
    rng = random.Random(f"{name}-{rate}-{seed}")
    low, high = WORKLOADS[name]
    now, out = 0.0, []
    for i in range(count):
        now += rng.expovariate(rate)
        prompt = tuple(rng.randrange(1, 120_000) for _ in range(rng.randint(low, high)))
        out.append(Arrival(f"r{i}", now, prompt, OUTPUT_LEN))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(name: str, split: str, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    count = max(MIN_REQUESTS, int(rate * args.seconds))
    timings = Simulation(split, args.replicas, get_profile(PROFILE)).run(
        arrivals(name, rate, count, args.seed))
    done = [t for t in timings.values() if t.first_s is not None and t.last_s is not None]
    ttft = [t.first_s - t.arrival_s for t in done]  # type: ignore[operator]
    tpot = [(t.last_s - t.first_s) / (t.output_len - 1) for t in done]  # type: ignore[operator]
    good = sum(1 for a, b in zip(ttft, tpot, strict=True)
               if a <= SLO_S["ttft"] and b <= SLO_S["tpot"])
    tight = sum(1 for a, b in zip(ttft, tpot, strict=True)
                if a <= SLO_S["ttft"] and b <= args.tight_tpot_ms / 1000)
    return {"workload": name, "split": split, "rate": rate, "requests": count,
            "completed": len(done), "attainment": round(good / count, 4),
            "tight_attainment": round(tight / count, 4),
            "median_ttft_ms": 1000 * statistics.median(ttft),
            "p90_ttft_ms": 1000 * percentile(ttft, 0.9),
            "median_tpot_ms": 1000 * statistics.median(tpot),
            "p90_tpot_ms": 1000 * percentile(tpot, 0.9)}


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.pd.run import plot, tables

    parser = argparse.ArgumentParser(prog="python -m benchmarks.pd.virtual",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS))
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="simulated seconds of arrivals per rate (at least 150 requests)")
    parser.add_argument("--tight-tpot-ms", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result-dir", type=Path, default=RESULT_DIR)
    args = parser.parse_args(argv)
    args.result_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.workloads:
        for split in args.splits:
            for rate in RATES[name]:
                row = measure(name, split, rate, args)
                print(json.dumps(row), flush=True)
                rows.append(row)
                if row["attainment"] < 0.5:
                    break
    table = tables(rows, args.workloads, args.splits)
    (args.result_dir / "summary.md").write_text(table)
    (args.result_dir / "summary.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "slo_s": SLO_S, "rows": rows},
        indent=1))
    plot(rows, args.workloads, args.splits, args.result_dir / "pd-goodput-virtual.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
