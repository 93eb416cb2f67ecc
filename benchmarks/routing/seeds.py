"""Two routers over several seeds: per-seed and pooled TTFT p90 and goodput.

One 256-request run lasts 4 simulated seconds, and its TTFT p90 is the 26th slowest
request: two requests more or less on the cold-start edge move it by tens of ms, and the
same seed differs between runs (random tie-breaks, a 2-core machine). This script runs
``run.py``'s setup (a fresh simulated cluster and router per run) for every
(workload, seed, router), alternating which router goes first, and reports per workload:
each seed's p90 and goodput per router, how many seeds each router won, and the pooled
figures: TTFT p90 over every request of every seed, and goodput as all requests within
the SLO over all runs' time.

Run: ``.venv/bin/python -m benchmarks.routing.seeds`` (about 30 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.routing.run import (
    RESULT_DIR,
    ROUTERS,
    default_model_dir,
    make_workload,
    run_args,
    run_one,
)
from llmserve.bench.loadgen.plots import latency_series

DEFAULT_ROUTERS = ("llmserve:prefix_aware", "vllm-router:cache_aware")
DEFAULT_WORKLOADS = ("shared-prefix", "multi-turn", "hot-prefix")


def pooled(results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """One router's runs of one workload as one sample: p90 over every request, and
    goodput as all requests within the SLO over the runs' summed duration."""
    ttfts = [t for r in results for t in latency_series(r)["TTFT"]]  # ms, requests that succeeded
    good = sum(r["request_goodput"] * r["duration"] for r in results)
    duration = sum(r["duration"] for r in results)
    return {"p90_ttft_ms": float(np.percentile(ttfts, 90)), "goodput": good / duration,
            "requests": float(len(ttfts))}


def compare(runs: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """``runs[router][seed]`` (one workload) -> per seed, wins and pooled figures."""
    routers = list(runs)
    seeds = sorted(set.intersection(*(set(runs[r]) for r in routers)))
    per_seed: list[dict[str, Any]] = [
        {"seed": s, **{r: {"p90_ttft_ms": runs[r][s]["p90_ttft_ms"],
                           "goodput": runs[r][s]["request_goodput"]} for r in routers}}
        for s in seeds]
    wins: dict[str, dict[str, int]] = {}
    for r in routers:
        others = [o for o in routers if o != r]
        wins[r] = {
            "p90": sum(all(row[r]["p90_ttft_ms"] < row[o]["p90_ttft_ms"] for o in others)
                       for row in per_seed),
            "goodput": sum(all(row[r]["goodput"] > row[o]["goodput"] for o in others)
                           for row in per_seed)}
    return {"seeds": seeds, "per_seed": per_seed, "wins": wins,
            "pooled": {r: pooled([runs[r][s] for s in seeds]) for r in routers}}


def report(name: str, table: Mapping[str, Any]) -> str:
    routers = list(table["pooled"])
    head = " | ".join(f"{r} p90 (goodput)" for r in routers)
    lines = [f"\n{name}", f"| seed | {head} |", "|---|" + "---|" * len(routers)]
    for row in table["per_seed"]:
        cells = " | ".join(f"{row[r]['p90_ttft_ms']:.0f} ({row[r]['goodput']:.2f})"
                           for r in routers)
        lines.append(f"| {row['seed']} | {cells} |")
    cells = " | ".join(f"{table['pooled'][r]['p90_ttft_ms']:.0f} "
                       f"({table['pooled'][r]['goodput']:.2f})" for r in routers)
    lines.append(f"| pooled | {cells} |")
    wins = " | ".join(f"{table['wins'][r]['p90']} ({table['wins'][r]['goodput']})"
                      for r in routers)
    lines.append(f"| seeds won | {wins} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing.seeds",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(DEFAULT_WORKLOADS))
    parser.add_argument("--routers", nargs="+", default=list(DEFAULT_ROUTERS),
                        choices=sorted(ROUTERS))
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--qps", type=float, default=64.0)
    parser.add_argument("--time-scale", type=float, default=0.25)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--kv-blocks", type=int, default=2048)
    parser.add_argument("--result-dir", type=Path, default=RESULT_DIR / "seeds")
    args = parser.parse_args(argv)
    model_dir = default_model_dir()
    started = time.monotonic()
    tables: dict[str, Any] = {}
    for name in args.workloads:
        runs: dict[str, dict[int, dict[str, Any]]] = {r: {} for r in args.routers}
        for seed in range(args.seeds):
            base = run_args(kv_blocks=args.kv_blocks, time_scale=args.time_scale,
                            qps=args.qps, requests=args.requests, seed=seed,
                            result_dir=args.result_dir / f"seed{seed}")
            base.result_dir.mkdir(parents=True, exist_ok=True)
            workload = make_workload(name, base, model_dir)
            order = args.routers if seed % 2 == 0 else args.routers[::-1]
            for router_name in order:  # alternate who goes first: no order effect
                runs[router_name][seed] = run_one(base, model_dir, workload, router_name)
        tables[name] = compare(runs)
        print(report(name, tables[name]), flush=True)
    (args.result_dir / "seeds.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "tables": tables}, indent=1))
    print(f"wrote {args.result_dir} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
