"""Prefix routing behind several independent ingresses: KV events against per-ingress guesses.

One simulated 8-replica cluster (``engines.sim``, profile ``llama-3.1-8b-h100``, every
replica publishing vLLM's KV events) behind 1, 2, 4 or 8 independent routers, each its
own process, the requests spread round-robin over them (as N nodes' proxies, or N gateway
replicas behind a load balancer, see them). Routers:

- ``events``: the llmserve gateway (``prefix_aware``) subscribed to every replica's KV
  events (``--worker-kv-events``): every ingress routes from what the replicas hold;
- ``approximate``: the same gateway without events: each ingress guesses from what it
  sent itself;
- ``cache_aware``: ``vllm-router --policy cache_aware`` instances (default thresholds);
- ``oracle``: one gateway that pins each group to a replica (the hit-rate reference).

Workloads (``benchmarks/routing/run.py``'s): ``shared-prefix`` (32 groups x 8 prompts,
2048-token system prompts; 2048 blocks per replica), ``multi-turn`` (64 sessions x 4
turns), and ``tight-kv``: shared-prefix with each replica's cache cut so that the groups'
prefixes just fit the cluster's (``--tight-kv-blocks``, 4096 prefix blocks over 8
replicas). Reported: the cluster's prefix-cache hit rate (vLLM's counters), its ratio to
the oracle's, TTFT, and TTFT p90 against the same router's single-ingress run.

Run: ``.venv/bin/python -m benchmarks.routing.ingresses --port 23000`` (about 25 min).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.cluster_procs import sim_cluster
from benchmarks.routing.procs import llmserve_gateway, vllm_router, vllm_router_binary
from benchmarks.routing.run import ORACLE, SLO_MS, default_model_dir, make_workload, run_args
from llmserve.bench.loadgen.report import build_result, write_result
from llmserve.bench.loadgen.runner import LoadConfig, run_load

RESULT_DIR = Path(__file__).parent / "results" / "ingresses"
ROUTERS = ("events", "approximate", "cache_aware")
WORKLOADS = ("shared-prefix", "multi-turn", "tight-kv")
# port layout from --port: replicas, then their event and replay sockets, then routers
# (and vllm-router's metrics at routers + 20)
READY_S = 240.0  # a gateway's start-up, with 8 of them and the simulator on 2 cores
EVENTS_AT, REPLAY_AT, ROUTERS_AT = 20, 40, 60


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing.ingresses",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=23000,
                        help="first of the ~90 ports this run uses")
    parser.add_argument("--ingresses", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=ROUTERS)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--qps", type=float, default=32.0, help="requests per simulated s")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--time-scale", type=float, default=0.25)
    parser.add_argument("--kv-blocks", type=int, default=2048)
    parser.add_argument("--tight-kv-blocks", type=int, default=600,
                        help="per replica on tight-kv: 8 x 600 = 1.17x the 4096 prefix blocks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result-dir", type=Path, default=RESULT_DIR)
    parser.add_argument("--no-oracle", action="store_true",
                        help="skip the oracle runs (one per workload)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of an earlier run in --result-dir's summary.json "
                             "(this run's rows replace those of the same workload, router and "
                             "ingress count) and tabulate them all")
    return parser.parse_args(argv)


@contextlib.contextmanager
def routers(kind: str, count: int, urls: Sequence[str], kv_events: Sequence[str],
            model_dir: str, port: int, logs: Path) -> Iterator[list[str]]:
    """``count`` routers of one kind, started side by side (each its own process)."""
    config: dict[str, Any] = {"policy": "prefix_aware", "tokenizer_source": model_dir}

    def one(i: int) -> contextlib.AbstractContextManager[str]:
        log = logs / f"{kind}-{count}-{i}.log"
        if kind == "cache_aware":
            return vllm_router(urls, kind, port + i, log, port + 20 + i)
        if kind == "oracle":
            return llmserve_gateway(urls, {"policy": ORACLE}, port + i, log,
                                    ready_timeout_s=READY_S)
        events = kv_events if kind == "events" else ()
        return llmserve_gateway(urls, config, port + i, log, events, ready_timeout_s=READY_S)

    with contextlib.ExitStack() as stack:
        managers = [one(i) for i in range(count)]
        with ThreadPoolExecutor(count) as pool:
            entered = list(pool.map(_enter, managers))
        for manager, url in entered:
            if isinstance(url, str):
                stack.push(manager.__exit__)
        failed = [error for _, error in entered if isinstance(error, BaseException)]
        if failed:
            raise failed[0]
        yield [url for _, url in entered if isinstance(url, str)]


def _enter(manager: contextlib.AbstractContextManager[str]) -> tuple[
        contextlib.AbstractContextManager[str], str | BaseException]:
    try:
        return manager, manager.__enter__()
    except Exception as exc:
        return manager, exc


def run_one(args: argparse.Namespace, model_dir: str, workload_name: str, kind: str,
            count: int) -> dict[str, Any]:
    tight = workload_name == "tight-kv"
    workload = make_workload("shared-prefix" if tight else workload_name,
                             run_args(requests=args.requests, seed=args.seed), model_dir)
    label = f"{workload_name}-{kind}-x{count}"
    logs = args.result_dir / "logs"
    replicas = 8
    events = {"enable_kv_cache_events": True, "publisher": "zmq",
              "endpoint": f"tcp://*:{args.port + EVENTS_AT}",
              "replay_endpoint": f"tcp://*:{args.port + REPLAY_AT}"}
    kv_events = [f"tcp://127.0.0.1:{args.port + EVENTS_AT + k},"
                 f"tcp://127.0.0.1:{args.port + REPLAY_AT + k}" for k in range(replicas)]
    extra = ["--kv-blocks", str(args.tight_kv_blocks if tight else args.kv_blocks),
             "--kv-events-config", json.dumps(events)]
    qps = args.qps / (4.0 if workload_name == "multi-turn" else 1.0)  # sessions of 4 turns
    with sim_cluster(model_dir, replicas, args.port, "llama-3.1-8b-h100", args.time_scale,
                     logs / f"{label}-sim.log", extra) as urls, \
            routers(kind, count, urls, kv_events, model_dir, args.port + ROUTERS_AT,
                    logs) as bases:
        config = LoadConfig(base_url=bases[0], more_base_urls=tuple(bases[1:]),
                            model=model_dir, qps=qps, seed=args.seed,
                            time_scale=args.time_scale, ignore_eos=True,
                            metrics_urls=tuple(urls), sample_interval_s=0.5)
        run = run_load(workload, config)
    result = build_result(workload, config, run, slo_ms=SLO_MS, label=label)
    result.update(router=kind, ingresses=count, workload=workload_name)
    write_result(result, args.result_dir, label)
    row = {k: result.get(k) for k in ("workload", "router", "ingresses", "completed",
                                      "prefix_cache_hit_rate", "median_ttft_ms",
                                      "p90_ttft_ms", "request_goodput")}
    print(json.dumps(row), flush=True)
    return row


def table(rows: Sequence[dict[str, Any]]) -> str:
    oracle = {r["workload"]: r["prefix_cache_hit_rate"] for r in rows
              if r["router"] == "oracle"}
    single = {(r["workload"], r["router"]): r["p90_ttft_ms"] for r in rows
              if r["ingresses"] == 1}
    lines = ["| workload | router | ingresses | done | hit rate | / oracle | TTFT p50 | "
             "TTFT p90 | p90 / 1 ingress |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hit, p90 = r["prefix_cache_hit_rate"], r["p90_ttft_ms"]
        ref, base = oracle.get(r["workload"]), single.get((r["workload"], r["router"]))
        cells = [r["workload"], r["router"], str(r["ingresses"]), str(r["completed"]),
                 f"{hit:.3f}", f"{hit / ref:.2f}" if ref else "-",
                 f"{r['median_ttft_ms']:.0f}", f"{p90:.0f}",
                 f"{p90 / base:.2f}" if base else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save(args: argparse.Namespace, rows: Sequence[dict[str, Any]]) -> None:
    """The table so far (``summary.md``) and its rows (``summary.json``)."""
    (args.result_dir / "summary.md").write_text(table(rows))
    (args.result_dir / "summary.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "rows": list(rows)}, indent=1))


def earlier_rows(result_dir: Path) -> list[dict[str, Any]]:
    path = result_dir / "summary.json"
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = json.loads(path.read_text())["rows"]
    return rows


def add_row(rows: Sequence[dict[str, Any]], row: dict[str, Any]) -> list[dict[str, Any]]:
    """``rows`` with ``row`` in place of an earlier one of the same run, in table order."""
    def same(r: dict[str, Any]) -> bool:
        return all(r[k] == row[k] for k in ("workload", "router", "ingresses"))

    kept = [r for r in rows if not same(r)] + [row]
    order = {name: i for i, name in enumerate(("oracle", *ROUTERS))}
    workloads = {name: i for i, name in enumerate(WORKLOADS)}
    return sorted(kept, key=lambda r: (workloads.get(r["workload"], 99),
                                       order.get(r["router"], 99), r["ingresses"]))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if "cache_aware" in args.routers and vllm_router_binary() is None:
        print("vllm-router is not installed (pip install 'llmserve[routers]'): skipping "
              "cache_aware", flush=True)
        args.routers = [r for r in args.routers if r != "cache_aware"]
    model_dir = default_model_dir()
    args.result_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = earlier_rows(args.result_dir) if args.merge else []
    for workload in args.workloads:
        if not args.no_oracle:
            rows = add_row(rows, run_one(args, model_dir, workload, "oracle", 1))
        for kind in args.routers:
            for count in args.ingresses:
                try:
                    rows = add_row(rows, run_one(args, model_dir, workload, kind, count))
                except Exception as exc:  # say which one failed and go on
                    print(f"{workload} / {kind} x{count} failed: {exc!r}", flush=True)
                save(args, rows)
    save(args, rows)
    print(table(rows))
    print(f"wrote {args.result_dir} in {time.monotonic() - started:.0f} s (simulated times)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
