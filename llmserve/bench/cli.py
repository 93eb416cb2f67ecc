"""``llmserve bench`` / ``python -m benchmarks``: run one workload against an endpoint.

Flags follow ``vllm bench serve`` where they overlap (``--request-rate`` and
``--max-concurrency`` are accepted as aliases of ``--qps`` and ``--concurrency``).
Exit status: 0 published, 1 not published (the client saturated its core),
2 bad arguments or no request completed.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from llmserve.bench.loadgen.client import CHAT, COMPLETIONS
from llmserve.bench.loadgen.cpu import MAX_CLIENT_CPU_UTIL
from llmserve.bench.loadgen.progress import ProgressBar
from llmserve.bench.loadgen.report import build_result, format_summary, result_name, write_result
from llmserve.bench.loadgen.runner import LoadConfig, run_load
from llmserve.bench.loadgen.stats import parse_goodput
from llmserve.bench.workloads import WORKLOADS, build_workload
from llmserve.bench.workloads.params import WorkloadParams

DEFAULT_RESULT_DIR = Path("bench-results")  # under the current directory

# flag -> WorkloadParams field
WORKLOAD_FLAGS: dict[str, tuple[str, type]] = {
    "--random-input-len": ("input_len", int),
    "--random-output-len": ("output_len", int),
    "--random-range-ratio": ("range_ratio", float),
    "--gsp-num-groups": ("gsp_num_groups", int),
    "--gsp-prompts-per-group": ("gsp_prompts_per_group", int),
    "--gsp-system-prompt-len": ("gsp_system_prompt_len", int),
    "--gsp-question-len": ("gsp_question_len", int),
    "--gsp-output-len": ("gsp_output_len", int),
    "--multi-turn-sessions": ("mt_num_sessions", int),
    "--multi-turn-turns": ("mt_turns", int),
    "--multi-turn-system-prompt-len": ("mt_system_prompt_len", int),
    "--multi-turn-input-len": ("mt_input_len", int),
    "--multi-turn-output-len": ("mt_output_len", int),
    "--multi-turn-think-time": ("mt_think_time_s", float),
    "--prefix-repetition-prefix-len": ("pr_prefix_len", int),
    "--prefix-repetition-suffix-len": ("pr_suffix_len", int),
    "--prefix-repetition-num-prefixes": ("pr_num_prefixes", int),
    "--prefix-repetition-output-len": ("pr_output_len", int),
    "--lora-num-adapters": ("lora_num_adapters", int),
    "--lora-zipf-s": ("lora_zipf_s", float),
    "--lora-prefix": ("lora_prefix", str),
    "--sharegpt-max-input-len": ("sharegpt_max_input_len", int),
    "--sharegpt-max-total-len": ("sharegpt_max_total_len", int),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmserve bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_argument_group("target")
    target.add_argument("--base-url", default="http://127.0.0.1:8000")
    target.add_argument("--model", default=None, help="default: the first of /v1/models")
    target.add_argument("--endpoint", default=CHAT, choices=[CHAT, COMPLETIONS])
    target.add_argument("--api-key", default=None)
    target.add_argument("--metrics-urls", nargs="*", default=[],
                        help="each replica's /metrics (or base URL), scraped before and after")
    load = parser.add_argument_group("load")
    load.add_argument("--qps", "--request-rate", dest="qps", type=float, default=None,
                      help="Poisson session arrivals per second (open loop); "
                           "default: all at once")
    load.add_argument("--concurrency", "--max-concurrency", dest="concurrency", type=int,
                      default=None, help="sessions in flight at most; alone: closed loop")
    load.add_argument("--num-requests", "--num-prompts", dest="num_requests", type=int,
                      default=None)
    load.add_argument("--duration", type=float, default=None,
                      help="start no new session after this many seconds")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--ignore-eos", action="store_true")
    load.add_argument("--time-scale", type=float, default=1.0,
                      help="the server runs X times faster than real time (engines.sim "
                           "--time-scale): inputs and reported times are in its time")
    load.add_argument("--request-timeout", type=float, default=600.0)
    load.add_argument("--sample-interval", type=float, default=1.0,
                      help="real seconds between per-replica load samples (0: off)")
    work = parser.add_argument_group("workload")
    work.add_argument("--workload", default="random", choices=sorted(WORKLOADS))
    work.add_argument("--tokenizer", default=None,
                      help="model directory with tokenizer.json: measure lengths with it")
    for flag, (field, kind) in WORKLOAD_FLAGS.items():
        work.add_argument(flag, dest=field, type=kind, default=None)
    out = parser.add_argument_group("output")
    out.add_argument("--goodput", nargs="*", default=[], metavar="NAME:MS",
                     help="SLOs for goodput, e.g. ttft:500 tpot:50 (e2el too)")
    out.add_argument("--result-dir", type=Path, default=DEFAULT_RESULT_DIR)
    out.add_argument("--label", default="")
    out.add_argument("--no-plots", action="store_true")
    out.add_argument("--max-client-cpu-util", type=float, default=MAX_CLIENT_CPU_UTIL)
    return parser


def workload_params(args: argparse.Namespace) -> WorkloadParams:
    given = {field: getattr(args, field) for field, _ in WORKLOAD_FLAGS.values()
             if getattr(args, field) is not None}
    return WorkloadParams(seed=args.seed, num_requests=args.num_requests, **given)


def first_model(base_url: str, api_key: str | None) -> str:
    request = urllib.request.Request(base_url.rstrip("/").removesuffix("/v1") + "/v1/models")
    if api_key:
        request.add_header("authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["data"][0]["id"])


def write_plots(result: dict[str, object], result_dir: Path, name: str) -> list[str]:
    """``plot: PATH`` lines, or one line saying how to get plots (numpy and matplotlib are
    optional: ``pip install 'llmserve[bench]'``)."""
    try:
        import matplotlib  # noqa: F401
        import numpy  # noqa: F401
    except ImportError as exc:
        return [f"plots skipped: {exc.name} is not installed (pip install 'llmserve[bench]', "
                "or --no-plots)"]
    from llmserve.bench.loadgen.plots import plot_all

    return [f"plot: {plot}" for plot in plot_all([result], result_dir, name)]


def bench_main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        slo = parse_goodput(args.goodput)
    except ValueError as exc:
        parser.error(str(exc))
    if args.time_scale <= 0:
        parser.error("--time-scale must be > 0")
    model = args.model or first_model(args.base_url, args.api_key)
    workload = build_workload(args.workload, workload_params(args), args.tokenizer)
    config = LoadConfig(
        base_url=args.base_url, model=model, endpoint=args.endpoint, qps=args.qps,
        concurrency=args.concurrency, duration_s=args.duration, seed=args.seed,
        time_scale=args.time_scale, ignore_eos=args.ignore_eos, api_key=args.api_key,
        metrics_urls=tuple(args.metrics_urls), request_timeout_s=args.request_timeout,
        sample_interval_s=args.sample_interval)
    print(f"{workload.name}: {len(workload.sessions)} sessions, {workload.num_requests} "
          f"requests -> {config.base_url}{config.endpoint} ({config.mode})", flush=True)
    run = run_load(workload, config, progress=ProgressBar(workload.num_requests))
    result = build_result(workload, config, run, slo_ms=slo, label=args.label,
                          max_client_cpu_util=args.max_client_cpu_util)
    name = result_name(result)
    path = write_result(result, args.result_dir, name)
    print(format_summary(result))
    print(f"result: {path}")
    if not args.no_plots:
        for line in write_plots(result, args.result_dir, name):
            print(line)
    if result["completed"] == 0:
        print("no request completed", file=sys.stderr)
        return 2
    if not result["published"]:
        print(f"NOT PUBLISHED: {result['unpublished_reason']}", file=sys.stderr)
        return 1
    return 0
