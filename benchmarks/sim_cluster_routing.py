"""Routing on a simulated 8-replica cluster behind the llmserve gateway (issue 4's "done when").

For each workload (shared-prefix, multi-turn) and each routing policy (round_robin,
power_of_two) it starts a fresh simulated cluster (``engines.sim``, profile
llama-3.1-8b-h100: Llama-3.1-8B on one H100 per replica) and the gateway in front of it
(``build_openai_app({"worker_urls": ..., "routing_config": {"policy": ...}})``), drives
the same workload at the same request rate through the gateway, scrapes every replica's
``/metrics`` and writes, under ``--result-dir``:

- ``sim-<workload>-<policy>.json``: the load generator's result (vLLM field names);
- ``sim-<workload>-*.png``: latency CDFs, throughput over time, per-replica load,
  policies side by side;
- ``sim_cluster_routing.md``: the comparison table.

Times are *simulated*: the simulator runs ``--time-scale`` times real time, and every
latency is multiplied back (throughputs divided). The default 0.5 runs the simulated
cluster at half real speed, so this 2-core machine (simulator, gateway and client share
it) does not add its own CPU delays to the simulated ones.

Run: ``.venv/bin/python -m benchmarks.sim_cluster_routing`` (about 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.cluster_procs import gateway, sim_cluster
from llmserve.bench.loadgen.plots import plot_all
from llmserve.bench.loadgen.report import build_result, format_summary, write_result
from llmserve.bench.loadgen.runner import LoadConfig, run_load
from llmserve.bench.workloads import build_workload
from llmserve.bench.workloads.params import WorkloadParams

RESULT_DIR = Path(__file__).parent / "results"
POLICIES = ("round_robin", "power_of_two")
WORKLOADS = ("shared-prefix", "multi-turn")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_cluster_routing",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=None,
                        help="tokenizer directory (default: the tiny model, built if missing)")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--profile", default="llama-3.1-8b-h100")
    parser.add_argument("--time-scale", type=float, default=0.5)
    parser.add_argument("--qps", type=float, default=16.0,
                        help="request rate (simulated req/s); multi-turn sessions arrive at "
                             "qps / turns")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES))
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gsp-num-groups", type=int, default=16)
    parser.add_argument("--gsp-prompts-per-group", type=int, default=8)
    parser.add_argument("--gsp-system-prompt-len", type=int, default=2048)
    parser.add_argument("--gsp-question-len", type=int, default=128)
    parser.add_argument("--gsp-output-len", type=int, default=256)
    parser.add_argument("--mt-sessions", type=int, default=32)
    parser.add_argument("--mt-turns", type=int, default=4)
    parser.add_argument("--mt-system-prompt-len", type=int, default=1024)
    parser.add_argument("--mt-input-len", type=int, default=128)
    parser.add_argument("--mt-output-len", type=int, default=128)
    parser.add_argument("--mt-think-time", type=float, default=1.0)
    parser.add_argument("--port", type=int, default=18000, help="first simulated replica port")
    parser.add_argument("--result-dir", type=Path, default=RESULT_DIR)
    return parser.parse_args(argv)


def default_model_dir() -> str:
    from llmserve.llm.tiny_model import FORMAT_VERSION, build_tiny_model

    cache = Path("~/.cache/llmserve").expanduser() / f"tiny-model-s0-l0-v{FORMAT_VERSION}"
    return str(build_tiny_model(cache))


def workload_params(args: argparse.Namespace) -> WorkloadParams:
    return WorkloadParams(
        seed=args.seed, gsp_num_groups=args.gsp_num_groups,
        gsp_prompts_per_group=args.gsp_prompts_per_group,
        gsp_system_prompt_len=args.gsp_system_prompt_len,
        gsp_question_len=args.gsp_question_len, gsp_output_len=args.gsp_output_len,
        mt_num_sessions=args.mt_sessions, mt_turns=args.mt_turns,
        mt_system_prompt_len=args.mt_system_prompt_len, mt_input_len=args.mt_input_len,
        mt_output_len=args.mt_output_len, mt_think_time_s=args.mt_think_time)


def run_one(args: argparse.Namespace, model_dir: str, workload_name: str,
            policy: str) -> dict[str, Any]:
    workload = build_workload(workload_name, workload_params(args), model_dir)
    qps = args.qps / args.mt_turns if workload_name == "multi-turn" else args.qps
    logs = args.result_dir / "logs"
    label = f"sim-{workload_name}-{policy}"
    with sim_cluster(model_dir, args.replicas, args.port, args.profile, args.time_scale,
                     logs / f"{label}-sim.log") as urls, \
            gateway(urls, policy, args.port + args.replicas + 10,
                    logs / f"{label}-gateway.log") as base_url:
        config = LoadConfig(base_url=base_url, model=model_dir, qps=qps, seed=args.seed,
                            time_scale=args.time_scale, ignore_eos=True,
                            metrics_urls=tuple(urls), sample_interval_s=0.5)
        run = run_load(workload, config)
    result = build_result(workload, config, run, label=label)
    result["routing_policy"] = policy
    result["num_replicas"] = args.replicas
    result["profile"] = args.profile
    result["target_request_rate"] = args.qps
    write_result(result, args.result_dir, label)
    print(format_summary(result), flush=True)
    return result


COLUMNS = (
    ("workload", "workload", "{}"), ("policy", "routing_policy", "{}"),
    ("done", "completed", "{:d}"), ("failed", "failed", "{:d}"),
    ("req/s", "request_throughput", "{:.2f}"), ("out tok/s", "output_throughput", "{:.0f}"),
    ("TTFT p50", "median_ttft_ms", "{:.0f}"), ("TTFT p99", "p99_ttft_ms", "{:.0f}"),
    ("TPOT p50", "median_tpot_ms", "{:.1f}"), ("TPOT p99", "p99_tpot_ms", "{:.1f}"),
    ("E2E p50", "median_e2el_ms", "{:.0f}"), ("E2E p99", "p99_e2el_ms", "{:.0f}"),
    ("hit rate", "prefix_cache_hit_rate", "{:.3f}"),
    ("imbalance req", "load_imbalance_requests", "{:.2f}"),
    ("imbalance tok", "load_imbalance_tokens", "{:.2f}"),
    ("client CPU", "client_cpu_util", "{:.0%}"), ("published", "published", "{}"),
)


def markdown_table(results: Sequence[Mapping[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Routing on a simulated cluster",
        "",
        f"{args.replicas} simulated replicas, profile `{args.profile}`, behind the llmserve "
        f"gateway; {args.qps:g} req/s Poisson (multi-turn: sessions at "
        f"{args.qps / args.mt_turns:g}/s, {args.mt_turns} turns each); seed {args.seed}.",
        f"Latencies in simulated ms (measured x{args.time_scale:g} time scale, multiplied "
        "back); throughputs per simulated second. TPOT/ITL/E2E include the gateway and "
        "client on a shared 2-core machine.",
        f"shared-prefix: {args.gsp_num_groups} groups x {args.gsp_prompts_per_group} prompts, "
        f"system prompt {args.gsp_system_prompt_len}, question {args.gsp_question_len}, "
        f"output {args.gsp_output_len} tokens. multi-turn: {args.mt_sessions} sessions, "
        f"system prompt {args.mt_system_prompt_len}, {args.mt_input_len} tokens per user "
        f"turn, output {args.mt_output_len}, think time {args.mt_think_time:g} s (mean).",
        "",
        "| " + " | ".join(c[0] for c in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for result in results:
        cells = []
        for _, key, fmt in COLUMNS:
            value = result.get(key)
            cells.append("-" if value is None else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = args.model_dir or default_model_dir()
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    for workload_name in args.workloads:
        per_workload = [run_one(args, model_dir, workload_name, p) for p in args.policies]
        plot_all(per_workload, args.result_dir, f"sim-{workload_name}")
        results += per_workload
    table = markdown_table(results, args)
    (args.result_dir / "sim_cluster_routing.md").write_text(table)
    summary = [{k: r.get(k) for _, k, _ in COLUMNS} for r in results]
    (args.result_dir / "sim_cluster_routing.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(replace_paths(args)).items()},
         "runs": summary}, indent=1))
    print(table)
    print(f"wrote {args.result_dir} in {time.monotonic() - started:.0f} s")
    return 0 if all(r["published"] and r["completed"] for r in results) else 1


def replace_paths(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{k: str(v) if isinstance(v, Path) else v
                                 for k, v in vars(args).items()})


if __name__ == "__main__":
    sys.exit(main())
