"""Replay the hot-prefix arrivals through a policy, without engines: cold prefills, load.

Each request is one of ``--groups`` prefixes (group 0 takes ``--hot-share`` of them),
arriving as a Poisson stream at ``--qps``; the policy ranks fake candidates whose
in-flight count is what it sent them in the last ``--duration-s`` seconds (a cold prefill
adds ``--miss-s``, and the first token comes after it). A *cold prefill* is the first
request of a group on a replica. It prints, per seed, the cold prefills and the busiest
replica's requests over the mean: the two numbers a balance rule trades, in a second
instead of a simulated-cluster run.

Run: ``.venv/bin/python -m benchmarks.routing.replay '{"policy": "prefix_aware"}'``
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.routing.hot_prefix import group_sequence
from routing import Candidate, RouteRequest, make_policy


def replay(config: Mapping[str, Any], seed: int = 0, n: int = 256, qps: float = 64.0,
           duration_s: float = 0.7, miss_s: float = 0.06, groups: int = 16,
           hot_share: float = 0.5, replicas: int = 8) -> tuple[int, float]:
    rng = random.Random(seed)
    order = group_sequence(n, groups, hot_share)
    rng.shuffle(order)
    options = dict(config)
    policy = make_policy(str(options.pop("policy")), **options)
    prefixes = {g: tuple(range(g * 100_000, g * 100_000 + 2048)) for g in range(groups)}
    ongoing = {f"r{i}": 0 for i in range(replicas)}
    sent = dict.fromkeys(ongoing, 0)
    ends: list[tuple[float, int, str, RouteRequest]] = []
    firsts: list[tuple[float, int, str, RouteRequest]] = []  # first tokens: after the prefill
    held: set[tuple[int, str]] = set()
    now, cold = 0.0, 0
    for i, group in enumerate(order):
        now += rng.expovariate(qps)
        while firsts and firsts[0][0] <= now:
            _, _, first_on, first = heapq.heappop(firsts)
            policy.on_first_token(first, first_on)
        while ends and ends[0][0] <= now:
            _, _, done_on, done = heapq.heappop(ends)
            ongoing[done_on] -= 1
            policy.on_finished(done, done_on)
        tokens = prefixes[group] + tuple(rng.randrange(50_000) for _ in range(128))
        request = RouteRequest(f"q{i}", "m", prompt_token_ids=tokens)
        chosen = policy.choose(request, [Candidate(r, num_ongoing=k)
                                         for r, k in ongoing.items()])[0].replica_id
        policy.on_routed(request, chosen)
        miss = (group, chosen) not in held
        held.add((group, chosen))
        cold += miss
        ongoing[chosen] += 1
        sent[chosen] += 1
        heapq.heappush(firsts, (now + (miss_s if miss else 0.0), i, chosen, request))
        heapq.heappush(ends, (now + duration_s + (miss_s if miss else 0.0), i, chosen, request))
    return cold, max(sent.values()) * replicas / n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing.replay",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help='routing_config JSON, e.g. \'{"policy": "prefix_aware"}\'')
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--qps", type=float, default=64.0)
    parser.add_argument("--duration-s", type=float, default=0.7)
    parser.add_argument("--miss-s", type=float, default=0.06)
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--hot-share", type=float, default=0.5)
    parser.add_argument("--replicas", type=int, default=8)
    args = parser.parse_args(argv)
    config = json.loads(args.config)
    for seed in range(args.seeds):
        cold, imbalance = replay(config, seed, args.requests, args.qps, args.duration_s,
                                 args.miss_s, args.groups, args.hot_share, args.replicas)
        print(json.dumps({"seed": seed, "cold_prefills": cold,
                          "max_over_mean_requests": round(imbalance, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
