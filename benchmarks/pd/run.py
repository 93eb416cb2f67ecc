"""Prefill/decode disaggregation against aggregated serving on a simulated 8-GPU cluster.

Every configuration has the same 8 simulated replicas (``engines.sim``, profile
``llama-3.1-8b-h100``: Llama-3.1-8B on one H100 each; KV over the profile's link,
50 GB/s per GPU, RDMA-class). ``agg``: 8 replicas behind llmserve's gateway with
``prefix_aware``. ``P:D``: P prefill and D decode replicas behind the same gateway built
by ``build_pd_openai_app`` (prefill pool ``prefix_aware``, decode pool ``least_loaded``).
Each is driven at rising request rates (open loop, Poisson arrivals) with:

- ``long``: 4k-8k prompt tokens (uniform), 256 output tokens (ignore_eos);
- ``mixed``: 200-3,900 prompt tokens (uniform), 256 output tokens.

The SLO is TTFT <= 1 s and TPOT <= 50 ms per request. ``goodput`` (as DistServe
defines it) is the highest rate at which at least 90% of requests meet the SLO, i.e.
TTFT p90 <= 1 s and TPOT p90 <= 50 ms both hold. Also reported: TTFT/TPOT p50 and p90 at
each rate, and goodput under a tighter TPOT SLO (``--tight-tpot-ms``).

Times are simulated: the simulator runs at ``--time-scale`` of real time and the load
generator scales its measurements back. Outputs under ``--result-dir``: one JSON per run,
``summary.json``, ``summary.md`` and ``pd-goodput.png``.

Run: ``.venv/bin/python -m benchmarks.pd.run --port 22100`` (about 20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.cluster_procs import serving, sim_cluster
from benchmarks.routing.procs import llmserve_gateway
from llmserve.bench.loadgen.report import build_result, write_result
from llmserve.bench.loadgen.runner import LoadConfig, run_load
from llmserve.bench.workloads import Workload, build_workload
from llmserve.bench.workloads.params import WorkloadParams

RESULT_DIR = Path(__file__).parent / "results"
PROFILE = "llama-3.1-8b-h100"
SLO_MS = {"ttft": 1000.0, "tpot": 50.0}
ATTAINMENT = 0.9
WORKLOADS: dict[str, dict[str, Any]] = {
    "long": {"input_len": 6144, "input_range_ratio": 1 / 3},   # 4,096-8,192
    "mixed": {"input_len": 2048, "input_range_ratio": 0.9},    # 204-3,891
}
RATES = {"long": (6.0, 10.0, 14.0, 18.0, 22.0, 26.0, 30.0),
         "mixed": (10.0, 20.0, 30.0, 40.0, 50.0, 60.0)}
SPLITS = ("agg", "2:6", "3:5", "4:4")
OUTPUT_LEN = 256
SIM_ARGS = ("--max-model-len", "16384")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pd.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=None, help="tokenizer dir (default: tiny model)")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS),
                        help="'agg' and P:D splits whose sum is --replicas")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--rates", nargs="*", type=float, default=None,
                        help="request rates (simulated req/s); default: per workload")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="simulated seconds of arrivals per rate (at least 48 requests)")
    parser.add_argument("--time-scale", type=float, default=0.5)
    parser.add_argument("--tight-tpot-ms", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=22100, help="first of ~60 ports")
    parser.add_argument("--result-dir", type=Path, default=RESULT_DIR)
    args = parser.parse_args(argv)
    for split in args.splits:
        if split != "agg" and sum(int(x) for x in split.split(":")) != args.replicas:
            parser.error(f"split {split} does not add up to --replicas {args.replicas}")
    return args


def make_workload(name: str, rate: float, args: argparse.Namespace,
                  model_dir: str) -> Workload:
    shape = WORKLOADS[name]
    params = WorkloadParams(seed=args.seed, num_requests=max(48, int(rate * args.seconds)),
                            input_len=shape["input_len"],
                            range_ratio=shape["input_range_ratio"], output_len=OUTPUT_LEN)
    workload = build_workload("random", params, model_dir)
    # a fixed output length: build_workload's range applies to both lengths
    sessions = tuple(
        s.__class__(s.session_id, tuple(t.__class__(t.user_text, t.input_len, OUTPUT_LEN)
                                        for t in s.turns))
        for s in workload.sessions)
    return Workload(name, sessions, {"seed": args.seed, **shape, "output_len": OUTPUT_LEN})


def nixl(role: str) -> tuple[str, str]:
    """vLLM's connector flag: without it the engines ignore kv_transfer_params, as vLLM."""
    return ("--kv-transfer-config", json.dumps({"kv_connector": "NixlConnector",
                                                "kv_role": role}))


@contextlib.contextmanager
def deployment(split: str, model_dir: str, args: argparse.Namespace,
               log_dir: Path) -> Iterator[tuple[str, list[str]]]:
    """The gateway URL and every engine URL (for load samples) of one configuration."""
    port, label = args.port, split.replace(":", "-")
    with contextlib.ExitStack() as stack:
        if split == "agg":
            urls = stack.enter_context(sim_cluster(
                model_dir, args.replicas, port, PROFILE, args.time_scale,
                log_dir / f"{label}-sim.log", SIM_ARGS))
            routing = {"policy": "prefix_aware", "tokenizer_source": model_dir}
            url = stack.enter_context(llmserve_gateway(
                urls, routing, port + 50, log_dir / f"{label}-gateway.log"))
            yield url, urls
            return
        num_prefill, num_decode = (int(x) for x in split.split(":"))
        prefill = stack.enter_context(sim_cluster(
            model_dir, num_prefill, port, PROFILE, args.time_scale,
            log_dir / f"{label}-prefill.log", (*SIM_ARGS, *nixl("kv_producer"))))
        decode = stack.enter_context(sim_cluster(
            model_dir, num_decode, port + 20, PROFILE, args.time_scale,
            log_dir / f"{label}-decode.log", (*SIM_ARGS, *nixl("kv_consumer"))))
        url = stack.enter_context(pd_gateway(prefill, decode, model_dir, port + 50,
                                             log_dir / f"{label}-gateway"))
        yield url, [*prefill, *decode]


@contextlib.contextmanager
def pd_gateway(prefill: Sequence[str], decode: Sequence[str], model_dir: str, port: int,
               log_base: Path) -> Iterator[str]:
    """``llmserve run`` with ``build_pd_openai_app`` fronting the running engines."""
    args = {"prefill_worker_urls": list(prefill), "decode_worker_urls": list(decode),
            "prefill_routing_config": {"policy": "prefix_aware",
                                       "tokenizer_source": model_dir},
            "decode_routing_config": {"policy": "least_loaded"}}
    config = log_base.with_suffix(".yaml")
    config.write_text(json.dumps({"applications": [{
        "name": "pd", "route_prefix": "/", "import_path": "llmserve.llm:build_pd_openai_app",
        "args": args}]}))
    cli = ["-m", "llmserve.cli", "--log-level", "WARNING", "run", str(config),
           "--port", str(port)]
    with serving(cli, log_base.with_suffix(".log"), f"http://127.0.0.1:{port}") as url:
        yield url


def run_rate(args: argparse.Namespace, model_dir: str, name: str, split: str,
             rate: float) -> dict[str, Any]:
    label = f"{name}-{split.replace(':', '-')}-{rate:g}"
    workload = make_workload(name, rate, args, model_dir)
    logs = args.result_dir / "logs"
    with deployment(split, model_dir, args, logs / label) as (url, engines):
        config = LoadConfig(base_url=url, model=model_dir, qps=rate, seed=args.seed,
                            time_scale=args.time_scale, ignore_eos=True,
                            metrics_urls=tuple(engines), sample_interval_s=0.0)
        run = run_load(workload, config)
    result = build_result(workload, config, run, slo_ms=SLO_MS, label=label)
    tight = {"ttft": SLO_MS["ttft"], "tpot": args.tight_tpot_ms}
    tight_result = build_result(workload, config, run, slo_ms=tight, label=label)
    result.update(split=split, rate=rate, attainment=attainment(result, workload),
                  tight_attainment=attainment(tight_result, workload))
    write_result(result, args.result_dir, label)
    row = summary_row(result)
    print(json.dumps(row), flush=True)
    return row


def attainment(result: Mapping[str, Any], workload: Workload) -> float:
    """Fraction of all sent requests (failures included) that met the SLO."""
    good = float(result.get("request_goodput") or 0.0) * float(result["duration"])
    return round(good / workload.num_requests, 4)


KEYS = ("workload", "split", "rate", "completed", "failed", "attainment", "tight_attainment",
        "median_ttft_ms", "p90_ttft_ms", "median_tpot_ms", "p90_tpot_ms",
        "request_throughput")


def summary_row(result: Mapping[str, Any]) -> dict[str, Any]:
    row = {k: result.get(k) for k in KEYS}
    row["workload"] = result.get("workload", {}).get("name") if isinstance(
        result.get("workload"), Mapping) else result.get("workload")
    return row


def goodput(rows: Sequence[Mapping[str, Any]], key: str = "attainment") -> float:
    """The highest rate with attainment >= 90% (rates below it too: no lucky points)."""
    best = 0.0
    for row in sorted(rows, key=lambda r: r["rate"]):
        if (row.get(key) or 0.0) < ATTAINMENT:
            break
        best = float(row["rate"])
    return best


def tables(rows: Sequence[Mapping[str, Any]], workloads: Sequence[str],
           splits: Sequence[str]) -> str:
    out = []
    for name in workloads:
        out.append(f"\n### {name}\n")
        out.append("| config | rate req/s | SLO met | TTFT p50 ms | TTFT p90 ms | "
                   "TPOT p50 ms | TPOT p90 ms |")
        out.append("|---|---|---|---|---|---|---|")
        for split in splits:
            for row in sorted((r for r in rows if r["workload"] == name
                               and r["split"] == split), key=lambda r: r["rate"]):
                out.append(f"| {split} | {row['rate']:g} | {row['attainment']:.0%} | "
                           f"{row['median_ttft_ms']:.0f} | {row['p90_ttft_ms']:.0f} | "
                           f"{row['median_tpot_ms']:.1f} | {row['p90_tpot_ms']:.1f} |")
        out.append("")
        out.append("| config | goodput req/s (TPOT <= 50 ms) | vs agg | "
                   "goodput req/s (tight TPOT) | vs agg |")
        out.append("|---|---|---|---|---|")
        per = {s: [r for r in rows if r["workload"] == name and r["split"] == s]
               for s in splits}
        base = goodput(per.get("agg", [])) or float("nan")
        tight_base = goodput(per.get("agg", []), "tight_attainment") or float("nan")
        for split in splits:
            g, t = goodput(per[split]), goodput(per[split], "tight_attainment")
            out.append(f"| {split} | {g:g} | {g / base:.2f}x | {t:g} | {t / tight_base:.2f}x |")
    return "\n".join(out) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], workloads: Sequence[str],
         splits: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4), squeeze=False)
    for ax, name in zip(axes[0], workloads, strict=True):
        for split in splits:
            points = sorted((r["rate"], r["attainment"]) for r in rows
                            if r["workload"] == name and r["split"] == split)
            ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o",
                    label=split)
        ax.axhline(100 * ATTAINMENT, color="grey", linestyle=":")
        ax.set_title(f"{name}: requests within TTFT <= 1 s, TPOT <= 50 ms")
        ax.set_xlabel("request rate (req/s, simulated)")
        ax.set_ylabel("SLO attainment (%)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from benchmarks.routing.run import default_model_dir

    model_dir = args.model_dir or default_model_dir()
    args.result_dir.mkdir(parents=True, exist_ok=True)
    (args.result_dir / "logs").mkdir(exist_ok=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for name in args.workloads:
        for split in args.splits:
            for rate in args.rates or RATES[name]:
                row = run_rate(args, model_dir, name, split, rate)
                row["workload"] = name
                rows.append(row)
                if row["attainment"] < 0.5:  # far past this configuration's capacity
                    break
    table = tables(rows, args.workloads, args.splits)
    (args.result_dir / "summary.md").write_text(table)
    (args.result_dir / "summary.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "slo_ms": SLO_MS,
         "rows": rows}, indent=1))
    plot(rows, args.workloads, args.splits, args.result_dir / "pd-goodput.png")
    print(table)
    print(f"wrote {args.result_dir} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
