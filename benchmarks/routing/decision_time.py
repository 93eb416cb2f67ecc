"""The router's own cost: decision time and memory of ``prefix_aware`` at scale.

64 replicas; the index is filled with ``--prefixes`` cached prompts (each a shared
``--stem-tokens`` stem out of ``--stems`` plus its own ``--tail-tokens`` tail, routed to a
random replica), then ``--decisions`` requests (half re-using a cached prompt's stem, half
new) are timed through ``choose`` + ``on_routed``, the whole routing path after
tokenisation (block hashing included), and then, apart, through the hooks each request
calls later (``on_first_token``, ``on_finished``), so that requests do not pile up in
the policy's per-request state as if none ever answered; in wall time and in this
thread's CPU time (the
latter leaves out preemption by other processes, which on a shared 2-core machine sets
the wall-time tail). Memory is what tracemalloc sees the policy
allocate, next to the index's own estimate.

With ``--kv-events`` it then measures the same decisions with every replica event-fed
(:class:`routing.kv_cache_view.ClusterCacheView`): each replica's cache filled, through
``BlockStored`` reports, with cached prompts up to ``--blocks-per-replica`` blocks; it
times applying those reports (per block) and prints the event-fed decision times next
to the approximate ones (the baseline, same script, same prompts).

Run: ``.venv/bin/python -m benchmarks.routing.decision_time [--kv-events]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence

from routing import Candidate, RouteRequest
from routing.block_hash import block_hashes
from routing.kv_cache_view import ClusterCacheView
from routing.prefix_aware import PrefixAwarePolicy


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing.decision_time")
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--prefixes", type=int, default=100_000)
    parser.add_argument("--stems", type=int, default=1000)
    parser.add_argument("--stem-tokens", type=int, default=1024)
    parser.add_argument("--tail-tokens", type=int, default=256)
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--max-index-mib", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-events", action="store_true",
                        help="also measure event-fed routing (every replica publishing)")
    parser.add_argument("--blocks-per-replica", type=int, default=4096,
                        help="with --kv-events: blocks each replica's cache holds")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    stems = [tuple(rng.randrange(128_000) for _ in range(args.stem_tokens))
             for _ in range(args.stems)]

    def prompt() -> tuple[int, ...]:
        tail = tuple(rng.randrange(128_000) for _ in range(args.tail_tokens))
        return rng.choice(stems) + tail

    names = [f"replica-{i:02d}" for i in range(args.replicas)]
    gc.collect()
    tracemalloc.start()
    policy = PrefixAwarePolicy(block_size=16, max_index_bytes=args.max_index_mib << 20,
                               rng=random.Random(args.seed))
    policy.on_replicas_changed(names)
    for i in range(args.prefixes):
        filled = RouteRequest(f"fill-{i}", "m", prompt_token_ids=prompt())
        where = rng.choice(names)
        policy.on_routed(filled, where)
        policy.on_finished(filled, where)
    gc.collect()
    traced_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    index = policy.indexes["m"]

    timed = time_decisions(policy, names, prompt, rng, args)
    result = {
        "replicas": args.replicas, "cached_prompts": args.prefixes,
        "prompt_tokens": args.stem_tokens + args.tail_tokens, "block_size": 16,
        "index_entries": len(index), "index_estimated_mib": index.estimated_bytes / 2**20,
        "traced_mib": traced_bytes / 2**20, "evicted_blocks": index.evicted_blocks,
        **timed,
    }
    if args.kv_events:
        events = measure_event_fed(names, prompt, rng, args)
        events["p99_vs_approximate"] = events["decision_p99_us"] / timed["decision_p99_us"]
        events["cpu_p99_vs_approximate"] = (events["decision_cpu_p99_us"]
                                            / timed["decision_cpu_p99_us"])
        result["event_fed"] = events
    print(json.dumps(result, indent=1))
    if args.kv_events:
        events = result["event_fed"]
        print(f"decision p99 with {args.replicas} replicas: event-fed "
              f"{events['decision_p99_us']:.0f} us (CPU {events['decision_cpu_p99_us']:.0f}), "
              f"approximate {timed['decision_p99_us']:.0f} us "
              f"(CPU {timed['decision_cpu_p99_us']:.0f}): ratio "
              f"{events['p99_vs_approximate']:.2f} (CPU {events['cpu_p99_vs_approximate']:.2f})")
    return 0


def measure_event_fed(names: list[str], prompt: Callable[[], tuple[int, ...]],
                      rng: random.Random, args: argparse.Namespace) -> dict[str, float]:
    """Fill every replica's cache through BlockStored reports, then time the decisions."""
    gc.collect()
    tracemalloc.start()
    view = ClusterCacheView(16)
    policy = PrefixAwarePolicy(block_size=16, max_index_bytes=args.max_index_mib << 20,
                               rng=random.Random(args.seed))
    policy.use_kv_view(view)
    policy.on_replicas_changed(names)
    apply_ns = 0
    stored = 0
    for name in names:
        view.set_live(name, True)
        while view.held_blocks(name) < args.blocks_per_replica:
            tokens = prompt()
            engine = [hash((name, h)) for h in block_hashes(tokens, 16)]
            start = time.perf_counter_ns()
            stored += view.store(name, "m", None, engine, tokens, 16)
            apply_ns += time.perf_counter_ns() - start
    gc.collect()
    traced_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"blocks_held": float(sum(view.held_blocks(n) for n in names)),
            "traced_mib": traced_bytes / 2**20,
            "apply_us_per_block": apply_ns / 1000 / max(1, stored),
            **time_decisions(policy, names, prompt, rng, args)}


def time_decisions(policy: PrefixAwarePolicy, names: list[str],
                   prompt: Callable[[], tuple[int, ...]], rng: random.Random,
                   args: argparse.Namespace) -> dict[str, float]:
    samples_us: list[float] = []
    cpu_us: list[float] = []
    hooks_us: list[float] = []
    for i in range(args.decisions):
        tokens = prompt() if i % 2 else tuple(rng.randrange(128_000) for _ in range(
            args.stem_tokens + args.tail_tokens))
        candidates = [Candidate(n, rng.randrange(8), 0, frozenset(),
                                {"num_running": float(rng.randrange(8)), "num_waiting": 0.0})
                      for n in names]
        request = RouteRequest(f"q-{i}", "m", prompt_token_ids=tokens)
        start_cpu = time.thread_time_ns()
        start = time.perf_counter_ns()
        chosen = policy.choose(request, candidates)[0]
        policy.on_routed(request, chosen.replica_id)
        samples_us.append((time.perf_counter_ns() - start) / 1000)
        cpu_us.append((time.thread_time_ns() - start_cpu) / 1000)
        start = time.perf_counter_ns()
        policy.on_first_token(request, chosen.replica_id)
        policy.on_finished(request, chosen.replica_id)
        hooks_us.append((time.perf_counter_ns() - start) / 1000)
    samples_us.sort()
    cpu_us.sort()
    hooks_us.sort()
    return {
        "decision_p50_us": statistics.median(samples_us),
        "decision_p99_us": samples_us[int(0.99 * (len(samples_us) - 1))],
        "decision_max_us": samples_us[-1],
        # this thread's CPU time per decision: the router's own cost, without the time
        # other processes on a shared machine hold the core (wall time counts that too)
        "decision_cpu_p50_us": statistics.median(cpu_us),
        "decision_cpu_p99_us": cpu_us[int(0.99 * (len(cpu_us) - 1))],
        "hooks_p50_us": statistics.median(hooks_us),  # on_first_token + on_finished
        "hooks_p99_us": hooks_us[int(0.99 * (len(hooks_us) - 1))],
    }


if __name__ == "__main__":
    raise SystemExit(main())
