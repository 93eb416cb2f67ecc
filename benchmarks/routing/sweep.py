"""TTFT at the highest load both routers sustain: a request-rate sweep.

The issue's target compares ``prefix_aware`` with ``power_of_two`` "at the highest load
both sustain". This script runs ``run.py``'s setup (a fresh simulated 8-replica cluster
per run, the llmserve gateway in front) for each workload at rising request rates, and
calls a rate *sustained* by a router when at least ``--sustain`` of its requests met the
SLO (TTFT <= 1 s, TPOT <= 50 ms) and every request completed. It prints, per workload,
each rate's TTFT p90 for both routers and the ratio at the highest rate both sustained.

Run: ``.venv/bin/python -m benchmarks.routing.sweep`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.routing.run import (
    RESULT_DIR,
    ROUTERS,
    default_model_dir,
    make_workload,
    run_args,
    run_one,
)

PAIR = ("llmserve:prefix_aware", "llmserve:power_of_two")  # ours, the baseline


def sustained(result: dict[str, Any], sustain: float) -> bool:
    done = result.get("completed") or 0
    if done == 0 or result.get("failed"):
        return False
    good = (result.get("request_goodput") or 0.0) / (result.get("request_throughput") or 1.0)
    return bool(good >= sustain)


def cell(result: dict[str, Any], sustain: float) -> dict[str, Any]:
    return {"p90_ttft_ms": result.get("p90_ttft_ms"),
            "sustained": sustained(result, sustain),
            "throughput": result.get("request_throughput"),
            "goodput": result.get("request_goodput"),
            "hit_rate": result.get("prefix_cache_hit_rate")}


def from_files(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """The table rebuilt from the per-run results a sweep left in ``--result-dir``."""
    table: dict[str, list[dict[str, Any]]] = {}
    for name in args.workloads:
        for qps in args.qps:
            folder = args.result_dir / f"qps{qps:g}"
            row: dict[str, Any] = {"qps": qps}
            for router_name in args.routers:
                path = folder / f"{name}-{router_name.replace(':', '-')}.json"
                if path.exists():
                    row[router_name] = cell(json.loads(path.read_text()), args.sustain)
            if all(r in row for r in args.routers):
                table.setdefault(name, []).append(row)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing.sweep",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["shared-prefix", "multi-turn"])
    parser.add_argument("--qps", nargs="+", type=float, default=[64, 96, 128, 160, 192])
    parser.add_argument("--routers", nargs=2, default=list(PAIR), choices=sorted(ROUTERS),
                        metavar=("OURS", "BASELINE"), help="the two routers compared")
    parser.add_argument("--sustain", type=float, default=0.9,
                        help="share of requests within the SLO for a rate to count")
    parser.add_argument("--time-scale", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--kv-blocks", type=int, default=2048,
                        help="KV blocks of 16 tokens per replica (run.py's default)")
    parser.add_argument("--result-dir", type=Path, default=RESULT_DIR / "sweep")
    parser.add_argument("--report-only", action="store_true",
                        help="print the table from a finished sweep's files; run nothing")
    args = parser.parse_args(argv)
    if args.report_only:
        report(from_files(args), args)
        return 0
    # run.py's defaults for everything the sweep does not vary
    base = run_args(kv_blocks=args.kv_blocks, time_scale=args.time_scale,
                    requests=args.requests, seed=args.seed, result_dir=args.result_dir)
    model_dir = default_model_dir()
    args.result_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    table: dict[str, list[dict[str, Any]]] = {}
    for name in args.workloads:
        workload = make_workload(name, base, model_dir)
        for qps in args.qps:
            row: dict[str, Any] = {"qps": qps}
            for router_name in args.routers:
                at_rate = argparse.Namespace(**{**vars(base), "qps": qps,
                                                 "result_dir": args.result_dir / f"qps{qps:g}"})
                at_rate.result_dir.mkdir(parents=True, exist_ok=True)
                result = run_one(at_rate, model_dir, workload, router_name)
                row[router_name] = cell(result, args.sustain)
            table.setdefault(name, []).append(row)
            if not any(row[r]["sustained"] for r in args.routers):
                break  # neither keeps up; higher rates only queue more
    report(table, args)
    (args.result_dir / "sweep.json").write_text(json.dumps(table, indent=1))
    print(f"wrote {args.result_dir} in {time.monotonic() - started:.0f} s")
    return 0


def report(table: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    ours, theirs = args.routers
    for name, rows in table.items():
        print(f"\n{name} (req/s simulated; * = sustained: >= {args.sustain:.0%} within SLO)")
        print(f"{'qps':>6} {ours.split(':')[-1] + ' p90':>18} {theirs.split(':')[-1] + ' p90':>18} "
              f"{'ratio':>6} "
              f"{'req/s done (ours / baseline)':>28} {'goodput (ours / baseline)':>26}")
        both, best = None, {ours: None, theirs: None}
        for row in rows:
            a, b = row[ours], row[theirs]
            ratio = a["p90_ttft_ms"] / b["p90_ttft_ms"] if b["p90_ttft_ms"] else float("nan")
            print(f"{row['qps']:>6g} {a['p90_ttft_ms']:>16.0f}{'*' if a['sustained'] else ' '} "
                  f"{b['p90_ttft_ms']:>16.0f}{'*' if b['sustained'] else ' '} {ratio:>6.2f} "
                  f"{a['throughput']:>17.1f} / {b['throughput']:<8.1f} "
                  f"{a['goodput']:>15.1f} / {b['goodput']:<8.1f}")
            for router_name, c in ((ours, a), (theirs, b)):
                if c["sustained"]:
                    best[router_name] = row["qps"]
            if a["sustained"] and b["sustained"]:
                both = (row["qps"], ratio)
        if both is None:
            print("no rate was sustained by both routers")
        else:
            print(f"highest rate both sustain: {both[0]:g} req/s; TTFT p90 ratio {both[1]:.2f} "
                  f"(target <= 0.33)")
        print("highest rate sustained: " + ", ".join(f"{r} {q if q is not None else '-'}"
                                                      for r, q in best.items()))


if __name__ == "__main__":
    sys.exit(main())
