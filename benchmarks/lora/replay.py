"""Replay ``lora-mix`` arrivals through routing policies in virtual time (no engines).

The same routers as ``run.py`` (llmserve's adapter-aware ``prefix_aware``, the
adapter-blind ``power_of_two`` and Ray Serve's multiplexing rule), the same 64 adapters
drawn by Zipf (s = 1.1), 8 replicas with 8 adapter slots each, at rising Poisson rates,
and the gateway's own residency rules (:class:`llmserve.lora.residency`'s: a replica
keeps at most 8 adapters, evicts the least recently used one no request uses, and a
request whose adapter needs a slot while all 8 are in use waits for one).

A replica is modelled by its engine core: prefills and adapter loads run one after the
other on it (vLLM runs ``add_lora`` between steps), decoding overlaps. Times come from the
simulator's ``llama-3.1-8b-h100`` profile (``engines/sim/profiles.py``): the prefill of a
512-token prompt (``step_time_s``), an adapter load (``lora_add_s`` + ``lora_load_s``) and
a decode step at batch 32 per output token. It is a model: it leaves out decode steps
interleaved with prefills and KV-cache limits, so absolute latencies are lower than a
real cluster's; the comparison between routers is what it is for. Virtual time, so the
numbers do not depend on the machine's load.

Run: ``.venv/bin/python -m benchmarks.lora.replay`` (seconds).
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.lora.run import BLIND, OURS, RAY, ROUTERS, markdown_table, verdict
from engines.sim.profiles import get_profile
from engines.sim.time_model import SeqChunk, step_time_s
from llmserve.bench.workloads.lora_mix import zipf_weights
from routing import Candidate, RouteRequest, make_policy
from routing.dispatch import Dispatcher


@dataclass(frozen=True)
class Costs:
    prefill_s: float
    load_s: float
    tpot_s: float

    @classmethod
    def of(cls, profile_name: str, input_len: int) -> Costs:
        profile = get_profile(profile_name)
        return cls(prefill_s=step_time_s(profile, [SeqChunk(input_len, 0)]),
                   load_s=profile.lora_add_s + profile.lora_load_s,
                   tpot_s=step_time_s(profile, [SeqChunk(1, input_len)] * 32))


@dataclass
class Replica:
    slots: int
    core_free_s: float = 0.0  # when its engine core can start the next prefill or load
    resident: OrderedDict[str, None] = field(default_factory=OrderedDict)
    using: dict[str, int] = field(default_factory=dict)  # adapter -> requests in flight
    waiting: deque[tuple[float, int]] = field(default_factory=deque)  # (arrival, request)
    served: int = 0

    def has_room_for(self, adapter: str) -> bool:
        return (adapter in self.resident or len(self.resident) < self.slots
                or any(not self.using.get(a) for a in self.resident))


@dataclass
class Tally:
    ttft_s: list[float] = field(default_factory=list)
    hits: int = 0
    loads: int = 0
    max_over_mean: float = 0.0  # requests of the busiest replica over the mean
    duration_s: float = 0.0  # of the arrivals


def replay(router: str, rate: float, *, seed: int = 0, requests: int = 4000,
           replicas: int = 8, slots: int = 8, adapters: int = 64, zipf_s: float = 1.1,
           costs: Costs | None = None, output_len: int = 64) -> Tally:
    costs = costs or Costs.of("llama-3.1-8b-h100", 512)
    rng = random.Random(seed)
    names = [f"llama:lora-{k}" for k in range(adapters)]
    weights = zipf_weights(adapters, zipf_s)
    options = dict(ROUTERS[router])
    policy = make_policy(str(options.pop("policy")), **options)
    nodes = {f"r{i}": Replica(slots) for i in range(replicas)}
    dispatcher = Dispatcher(policy, list(nodes))
    events: list[tuple[float, int, str, int, str]] = []  # (time, order, kind, request, replica)
    now, order = 0.0, 0
    for index in range(requests):
        now += rng.expovariate(rate)
        heapq.heappush(events, (now, order, "arrive", index, ""))
        order += 1
    adapter_of = {i: rng.choices(names, weights)[0] for i in range(requests)}
    asks = {i: RouteRequest(f"q{i}", "llama", lora_adapter=adapter_of[i])
            for i in range(requests)}
    arrived: dict[int, float] = {}
    tally = Tally()

    def start(index: int, rid: str, at_s: float) -> None:
        nonlocal order
        node, adapter = nodes[rid], adapter_of[index]
        begin = max(at_s, node.core_free_s)
        if adapter in node.resident:
            tally.hits += 1
        else:
            if len(node.resident) >= node.slots:
                victim = next(a for a in node.resident if not node.using.get(a))
                del node.resident[victim]
            node.resident[adapter] = None
            begin += costs.load_s
            tally.loads += 1
        node.resident.move_to_end(adapter)
        node.using[adapter] = node.using.get(adapter, 0) + 1
        first = begin + costs.prefill_s
        node.core_free_s = first
        tally.ttft_s.append(first - arrived[index])
        heapq.heappush(events, (first, order, "first", index, rid))
        heapq.heappush(events, (first + output_len * costs.tpot_s, order + 1, "end", index,
                                rid))
        order += 2

    while events:
        at_s, _, kind, index, rid = heapq.heappop(events)
        if kind == "arrive":
            arrived[index] = at_s
            candidates = [Candidate(r, dispatcher.in_flight_of(r), 0, frozenset(n.resident))
                          for r, n in nodes.items()]
            chosen = dispatcher.choose(asks[index], candidates)
            assert chosen is not None
            node = nodes[chosen]
            node.served += 1
            if node.has_room_for(adapter_of[index]):
                start(index, chosen, at_s)
            else:
                node.waiting.append((at_s, index))
        elif kind == "first":
            dispatcher.first_token(asks[index], rid)
        else:
            dispatcher.finished(asks[index], rid)
            node = nodes[rid]
            adapter = adapter_of[index]
            node.using[adapter] -= 1
            while node.waiting and node.has_room_for(adapter_of[node.waiting[0][1]]):
                _, waiter = node.waiting.popleft()
                start(waiter, rid, at_s)
    served = [n.served for n in nodes.values()]
    tally.max_over_mean = max(served) * len(served) / sum(served)
    tally.duration_s = now
    return tally


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(router: str, rate: float, tally: Tally, slo_s: float, sustain: float,
        requests: int) -> dict[str, Any]:
    within = sum(1 for t in tally.ttft_s if t <= slo_s)
    duration = tally.duration_s
    return {"router": router, "rate": rate, "completed": len(tally.ttft_s),
            "failed": requests - len(tally.ttft_s),
            "adapter_hit_rate": tally.hits / len(tally.ttft_s),
            "adapter_loads_per_s": tally.loads / duration,
            "median_ttft_ms": 1000 * percentile(tally.ttft_s, 0.5),
            "p90_ttft_ms": 1000 * percentile(tally.ttft_s, 0.9),
            "request_goodput": within / duration,
            "load_imbalance_requests": tally.max_over_mean,
            "sustained": within >= sustain * requests}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lora.replay",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+",
                        default=[32.0, 64.0, 128.0, 192.0, 256.0, 320.0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--slo-ttft-s", type=float, default=1.0)
    parser.add_argument("--sustain", type=float, default=0.9)
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for rate in args.rates:
        for router in (OURS, BLIND, RAY):
            per_seed = [row(router, rate, replay(router, rate, seed=s, requests=args.requests),
                            args.slo_ttft_s, args.sustain, args.requests)
                        for s in range(args.seeds)]
            rows.append(mean_row(per_seed))
            print(json.dumps(rows[-1]), flush=True)
    print(markdown_table(rows))
    print(json.dumps(verdict(rows)))
    return 0


def mean_row(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The seeds' mean of every number; sustained only if every seed sustained it."""
    out: dict[str, Any] = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, float) and key != "rate":
            out[key] = sum(r[key] for r in rows) / len(rows)
    out["completed"] = sum(r["completed"] for r in rows) // len(rows)
    out["sustained"] = all(r["sustained"] for r in rows)
    return out


if __name__ == "__main__":
    sys.exit(main())
