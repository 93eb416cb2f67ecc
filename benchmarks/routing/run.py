"""Routing on one simulated 8-replica cluster: llmserve's policies against vllm-router.

For each workload and each router it starts a fresh simulated cluster (``engines.sim``,
profile ``llama-3.1-8b-h100``, exact vLLM prefix caching, vLLM's metric names), the
router in front of it, and drives the same workload at the same request rate:

1. ``shared-prefix``: groups sharing a long system prompt; all the groups' prefixes
   together exceed one replica's KV cache (``--kv-blocks``) but fit in the cluster's;
2. ``multi-turn``: chat sessions re-sending the growing conversation (4 turns each, every
   session its own system prompt); ``multi-turn-long``: the shape of vLLM's own multi-turn
   benchmark (6-9 turns, a 512-token prefix common to all sessions);
3. ``hot-prefix``: shared-prefix groups where one group takes half of the traffic;
4. ``random``: unrelated prompts (the control).

Routers: llmserve's gateway with a policy (``llmserve:NAME``), the group oracle
(``oracle``: each group pinned to one replica, groups spread evenly; the hit-rate
reference), and the Rust ``vllm-router`` (``vllm-router:NAME``) with its default
thresholds. Times are simulated (see ``--time-scale``). Outputs under ``--result-dir``:
``<workload>-<router>.json`` (the load generator's result), ``<workload>-latency-cdf.png``,
``summary.json`` and ``summary.md`` (the table).

Run: ``.venv/bin/python -m benchmarks.routing.run`` (about 8 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.cluster_procs import sim_cluster
from benchmarks.routing import hot_prefix
from benchmarks.routing.procs import llmserve_gateway, vllm_router
from llmserve.bench.loadgen.plots import plot_latency_cdfs
from llmserve.bench.loadgen.report import build_result, write_result
from llmserve.bench.loadgen.runner import LoadConfig, run_load
from llmserve.bench.workloads import Workload, build_workload
from llmserve.bench.workloads.params import WorkloadParams

RESULT_DIR = Path(__file__).parent / "results"
WORKLOADS = ("shared-prefix", "multi-turn", "multi-turn-long", "hot-prefix", "random")
ORACLE = "benchmarks.routing.oracle:GroupOraclePolicy"
ROUTERS: dict[str, tuple[str, dict[str, Any] | str]] = {
    "llmserve:prefix_aware": ("llmserve", {"policy": "prefix_aware"}),
    "llmserve:scored": ("llmserve", {"policy": "scored"}),
    "llmserve:session_affinity": ("llmserve", {"policy": "session_affinity"}),
    "llmserve:least_loaded": ("llmserve", {"policy": "least_loaded"}),
    "llmserve:power_of_two": ("llmserve", {"policy": "power_of_two"}),
    "llmserve:round_robin": ("llmserve", {"policy": "round_robin"}),
    "oracle": ("llmserve", {"policy": ORACLE}),
    "vllm-router:cache_aware": ("vllm-router", "cache_aware"),
    "vllm-router:power_of_two": ("vllm-router", "power_of_two"),
    "vllm-router:consistent_hash": ("vllm-router", "consistent_hash"),
}
DEFAULT_ROUTERS = ("llmserve:prefix_aware", "llmserve:power_of_two", "oracle",
                   "vllm-router:cache_aware", "vllm-router:power_of_two",
                   "vllm-router:consistent_hash")
ORACLE_WORKLOADS = ("shared-prefix", "multi-turn", "multi-turn-long", "hot-prefix")
MULTI_TURN_TURNS = 4
LONG_TURNS = (6, 9)  # multi-turn-long: turns per session, uniform
MULTI_TURN = {"multi-turn": float(MULTI_TURN_TURNS),  # mean turns per session
              "multi-turn-long": sum(LONG_TURNS) / 2}
HOT_ORACLE = "benchmarks.routing.oracle:HotGroupOraclePolicy"
SLO_MS = {"ttft": 1000.0, "tpot": 50.0}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing.run",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=None, help="tokenizer dir (default: tiny model)")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--profile", default="llama-3.1-8b-h100")
    parser.add_argument("--kv-blocks", type=int, default=2048,
                        help="KV blocks of 16 tokens per replica (2048 = 32k tokens)")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--qps", type=float, default=24.0, help="requests per simulated s")
    parser.add_argument("--requests", type=int, default=256, help="requests per workload")
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--routers", nargs="*", default=list(DEFAULT_ROUTERS),
                        choices=sorted(ROUTERS))
    parser.add_argument("--router", action="append", default=[], metavar="LABEL=JSON",
                        help="an extra llmserve router: a label and its routing_config, e.g. "
                             "'pa-mean={\"policy\": \"prefix_aware\", ...}' (repeatable)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=19000)
    parser.add_argument("--result-dir", type=Path, default=RESULT_DIR)
    args = parser.parse_args(argv)
    for spec in args.router:
        label, sep, config = spec.partition("=")
        if not sep or not label:
            parser.error(f"--router wants LABEL=JSON, got {spec!r}")
        ROUTERS[f"llmserve:{label}"] = ("llmserve", json.loads(config))
        args.routers.append(f"llmserve:{label}")
    return args


def run_args(**overrides: Any) -> argparse.Namespace:
    """This script's defaults with ``overrides``: the settings ``run_one`` and
    ``make_workload`` read, for scripts that drive them (``sweep.py``, ``seeds.py``)."""
    args = parse_args([])
    for key, value in overrides.items():
        if not hasattr(args, key):
            raise TypeError(f"run.py has no setting {key!r}")
        setattr(args, key, value)
    return args


def make_workload(name: str, args: argparse.Namespace, model_dir: str) -> Workload:
    n, out = args.requests, args.output_len
    if name == "hot-prefix":
        return hot_prefix.build(hot_prefix.HotPrefixParams(
            seed=args.seed, num_requests=n, output_len=out), model_dir)
    if name == "multi-turn-long":  # vLLM's benchmarks/multi_turn shape: 6-9 turns, common prefix
        long_chat = WorkloadParams(
            seed=args.seed, num_requests=n, mt_num_sessions=n, mt_turns=LONG_TURNS[0],
            mt_turns_max=LONG_TURNS[1],
            mt_common_prefix_len=512, mt_system_prompt_len=1024, mt_input_len=140,
            mt_output_len=out, mt_think_time_s=1.0)
        return dataclasses.replace(build_workload("multi-turn", long_chat, model_dir),
                                   name=name)
    groups = 32  # 32 x 2048-token prefixes = 64k tokens: 2x one replica's 32k, 1/4 the cluster
    params = WorkloadParams(
        seed=args.seed, num_requests=n, input_len=1024, output_len=out,
        gsp_num_groups=groups, gsp_prompts_per_group=max(1, n // groups),
        gsp_system_prompt_len=2048, gsp_question_len=128, gsp_output_len=out,
        mt_num_sessions=max(1, n // MULTI_TURN_TURNS), mt_turns=MULTI_TURN_TURNS,
        mt_system_prompt_len=1024,
        mt_input_len=128, mt_output_len=out, mt_think_time_s=1.0)
    return build_workload(name, params, model_dir)


@contextlib.contextmanager
def router(name: str, urls: Sequence[str], port: int, log: Path,
           config_override: dict[str, Any] | None = None) -> Iterator[str]:
    kind, config = ROUTERS[name]
    config = config_override or config
    if kind == "vllm-router":
        with vllm_router(urls, str(config), port, log) as url:
            yield url
    else:
        assert isinstance(config, dict)
        with llmserve_gateway(urls, config, port, log) as url:
            yield url


def run_one(args: argparse.Namespace, model_dir: str, workload: Workload,
            router_name: str) -> dict[str, Any]:
    label = f"{workload.name}-{router_name.replace(':', '-')}"
    logs = args.result_dir / "logs"
    qps = args.qps / MULTI_TURN.get(workload.name, 1.0)  # multi-turn: sessions per s
    extra = ("--kv-blocks", str(args.kv_blocks))
    override: dict[str, Any] | None = None
    if router_name == "oracle" and workload.name == "hot-prefix":
        hot = next(s for s in workload.sessions if s.session_id.startswith("hot-0-"))
        override = {"policy": HOT_ORACLE, "hot_marker": (hot.system_prompt or "")[:64],
                    "tokenizer_dir": model_dir}
    if router_name == "oracle" and workload.name == "multi-turn-long":
        override = {"policy": ORACLE, "key_tokens": 1024}  # past the 512-token common prefix
    with sim_cluster(model_dir, args.replicas, args.port, args.profile, args.time_scale,
                     logs / f"{label}-sim.log", extra) as urls, \
            router(router_name, urls, args.port + args.replicas + 10,
                   logs / f"{label}-router.log", override) as base_url:
        config = LoadConfig(base_url=base_url, model=model_dir, qps=qps, seed=args.seed,
                            time_scale=args.time_scale, ignore_eos=True,
                            metrics_urls=tuple(urls), sample_interval_s=0.5)
        run = run_load(workload, config)
    result = build_result(workload, config, run, slo_ms=SLO_MS, label=label)
    result["router"] = router_name
    write_result(result, args.result_dir, label)
    row = summary_row(result)
    print(json.dumps(row), flush=True)
    return result


KEYS = ("workload", "router", "completed", "failed", "request_throughput",
        "output_throughput", "request_goodput", "median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms",
        "median_tpot_ms", "prefix_cache_hit_rate", "load_imbalance_requests",
        "load_imbalance_tokens", "client_cpu_util", "published")


def summary_row(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: result.get(k) for k in KEYS}


COLUMNS = (
    ("workload", "workload", "{}"), ("router", "router", "{}"),
    ("done", "completed", "{:d}"), ("TTFT p50", "median_ttft_ms", "{:.0f}"),
    ("TTFT p90", "p90_ttft_ms", "{:.0f}"), ("TTFT p99", "p99_ttft_ms", "{:.0f}"),
    ("TPOT p50", "median_tpot_ms", "{:.1f}"), ("out tok/s", "output_throughput", "{:.0f}"),
    ("goodput req/s", "request_goodput", "{:.2f}"),
    ("hit rate", "prefix_cache_hit_rate", "{:.3f}"),
    ("max/mean req", "load_imbalance_requests", "{:.2f}"),
    ("max/mean tok", "load_imbalance_tokens", "{:.2f}"),
)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = ["-" if row.get(k) is None else fmt.format(row[k]) for _, k, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def default_model_dir() -> str:
    from llmserve.llm.tiny_model import cached_tiny_model

    return str(cached_tiny_model())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = args.model_dir or default_model_dir()
    args.result_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for name in args.workloads:
        workload = make_workload(name, args, model_dir)
        results = []
        for router_name in args.routers:
            if router_name == "oracle" and name not in ORACLE_WORKLOADS:
                continue
            try:
                results.append(run_one(args, model_dir, workload, router_name))
            except Exception as exc:  # say which router failed and go on with the others
                print(f"{name} / {router_name} failed: {exc!r}", flush=True)
                rows.append({"workload": name, "router": router_name, "error": repr(exc)})
        if results:
            plot_latency_cdfs(results, args.result_dir / f"{name}-latency-cdf.png")
            # consistent_hash's tail (all single-turn traffic on one replica) sets the axes
            rest = [r for r in results if "consistent_hash" not in str(r.get("router"))]
            if 0 < len(rest) < len(results):
                plot_latency_cdfs(rest, args.result_dir
                                  / f"{name}-latency-cdf-without-consistent-hash.png")
        rows += [summary_row(r) for r in results]
    table = markdown_table([r for r in rows if "error" not in r])
    (args.result_dir / "summary.md").write_text(table)
    (args.result_dir / "summary.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "slo_ms": SLO_MS,
         "rows": rows}, indent=1))
    print(table)
    print(f"wrote {args.result_dir} in {time.monotonic() - started:.0f} s")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
