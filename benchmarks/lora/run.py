"""LoRA multiplexing on a simulated 8-replica cluster: adapter hit rate, loads, TTFT.

The ``lora-mix`` workload (random prompts, each for one of 64 adapters drawn by Zipf with
s = 1.1) at rising request rates, on 8 simulated H100 Llama-3.1-8B replicas
(``engines.sim``, profile ``llama-3.1-8b-h100``, 8 adapter slots each: ``--max-loras 8``),
with the llmserve gateway in front loading adapters on demand (``--lora-dir``,
``--max-loras-per-replica 8``). Routers (the gateway's routing policy):

- ``llmserve:prefix_aware``: llmserve's default, adapter-aware;
- ``llmserve:power_of_two``: adapter-blind;
- ``ray-multiplex-rule``: Ray Serve's multiplexing rule (a replica holding the adapter,
  else the least loaded one), :mod:`benchmarks.lora.ray_rule`.

Per run: adapter hit rate (requests whose adapter was resident on the chosen replica, no
load), adapter loads per second, TTFT p50/p90, goodput within the SLO (TTFT <= 1 s,
TPOT <= 50 ms) and max/mean requests per replica. A rate is *sustained* by a router when
every request completed and at least ``--sustain`` met the SLO. Load times come from the
simulator's profile (``lora_add_s``, ``lora_load_s``; sources in engines/sim/profiles.py).

Run: ``.venv/bin/python -m benchmarks.lora.run`` (results in benchmarks/lora/results/).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.cluster_procs import serving, sim_cluster
from llmserve.bench.loadgen.report import build_result, write_result
from llmserve.bench.loadgen.runner import LoadConfig, run_load
from llmserve.bench.workloads import Workload, build_workload
from llmserve.bench.workloads.params import WorkloadParams

RESULT_DIR = Path(__file__).parent / "results"
BASE = "llama"
ROUTERS: dict[str, dict[str, Any]] = {
    "llmserve:prefix_aware": {"policy": "prefix_aware"},
    "llmserve:power_of_two": {"policy": "power_of_two"},
    "ray-multiplex-rule": {"policy": "benchmarks.lora.ray_rule:RayMultiplexRulePolicy"},
}
OURS, BLIND, RAY = "llmserve:prefix_aware", "llmserve:power_of_two", "ray-multiplex-rule"
SLO_MS = {"ttft": 1000.0, "tpot": 50.0}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lora.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=None, help="tokenizer dir (default: tiny model)")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--slots", type=int, default=8, help="adapter slots per replica")
    parser.add_argument("--adapters", type=int, default=64)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--profile", default="llama-3.1-8b-h100")
    parser.add_argument("--rates", type=float, nargs="+", default=[16.0, 32.0, 48.0, 64.0],
                        help="requests per second")
    parser.add_argument("--duration-s", type=float, default=30.0,
                        help="seconds of arrivals per run (requests = rate x duration)")
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=list(ROUTERS))
    parser.add_argument("--sustain", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=21000, help="first port of the range used")
    parser.add_argument("--result-dir", type=Path, default=RESULT_DIR)
    return parser.parse_args(argv)


def make_workload(args: argparse.Namespace, model_dir: str, rate: float) -> Workload:
    params = WorkloadParams(seed=args.seed, num_requests=round(rate * args.duration_s),
                            input_len=args.input_len, output_len=args.output_len,
                            lora_num_adapters=args.adapters, lora_zipf_s=args.zipf_s,
                            lora_prefix=f"{BASE}:lora-")
    return build_workload("lora-mix", params, model_dir)


def adapter_folder(source: Path, count: int, into: Path) -> Path:
    """``count`` adapters (copies of one real peft adapter) named lora-0 .. lora-N."""
    for index in range(count):
        shutil.copytree(source, into / f"lora-{index}")
    return into


@contextlib.contextmanager
def gateway(urls: Sequence[str], routing: Mapping[str, Any], lora_dir: Path, slots: int,
            port: int, log: Path) -> Iterator[str]:
    args = ["-m", "llmserve.cli", "--log-level", "WARNING", "serve", "--port", str(port),
            "--routing-config", json.dumps(dict(routing)), "--worker-urls", *urls,
            "--lora-dir", str(lora_dir), "--max-loras-per-replica", str(slots)]
    # it reads peft/torch before it serves: allow for a slow start on a busy machine
    with serving(args, log, f"http://127.0.0.1:{port}", ready_timeout_s=300) as url:
        yield url


def lora_counts(metrics_text: str) -> dict[str, float]:
    """Sums of the gateway's adapter counters: hits, misses, loads."""
    sums = {"hits": 0.0, "misses": 0.0, "loads": 0.0}
    for line in metrics_text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("llmserve_lora_requests_total{"):
            sums["hits" if 'resident="true"' in name else "misses"] += float(value)
        elif name.startswith("llmserve_lora_adapter_loads_total{"):
            sums["loads"] += float(value)
    return sums


def run_one(args: argparse.Namespace, model_dir: str, lora_dir: Path, workload: Workload,
            router: str, rate: float) -> dict[str, Any]:
    label = f"lora-mix-{router.replace(':', '-')}-{rate:g}"
    logs = args.result_dir / "logs"
    extra = ("--served-model-name", BASE, "--max-loras", str(args.slots))
    with sim_cluster(model_dir, args.replicas, args.port, args.profile, 1.0,
                     logs / f"{label}-sim.log", extra) as urls, \
            gateway(urls, ROUTERS[router], lora_dir, args.slots, args.port + args.replicas + 10,
                    logs / f"{label}-gateway.log") as base_url:
        config = LoadConfig(base_url=base_url, model=BASE, qps=rate, seed=args.seed,
                            ignore_eos=True, metrics_urls=tuple(urls), sample_interval_s=0.5)
        run = run_load(workload, config)
        counts = lora_counts(httpx.get(base_url + "/metrics", timeout=10).text)
    result = build_result(workload, config, run, slo_ms=SLO_MS, label=label)
    served = counts["hits"] + counts["misses"]
    result.update(router=router, rate=rate,
                  adapter_hit_rate=counts["hits"] / served if served else None,
                  adapter_loads=counts["loads"],
                  adapter_loads_per_s=counts["loads"] / run.duration_s if run.duration_s else None)
    write_result(result, args.result_dir, label)
    row = summary_row(result, args.sustain)
    print(json.dumps(row), flush=True)
    return row


def sustained(result: Mapping[str, Any], sustain: float) -> bool:
    done = result.get("completed") or 0
    if done == 0 or result.get("failed"):
        return False
    good = (result.get("request_goodput") or 0.0) / (result.get("request_throughput") or 1.0)
    return bool(good >= sustain)


def summary_row(result: Mapping[str, Any], sustain: float) -> dict[str, Any]:
    keys = ("router", "rate", "completed", "failed", "adapter_hit_rate", "adapter_loads_per_s",
            "median_ttft_ms", "p90_ttft_ms", "request_throughput", "request_goodput",
            "load_imbalance_requests", "client_cpu_util")
    return {**{k: result.get(k) for k in keys}, "sustained": sustained(result, sustain)}


COLUMNS = (("rate req/s", "rate", "{:g}"), ("router", "router", "{}"),
           ("done", "completed", "{:d}"), ("adapter hit rate", "adapter_hit_rate", "{:.3f}"),
           ("loads/s", "adapter_loads_per_s", "{:.2f}"),
           ("TTFT p50 ms", "median_ttft_ms", "{:.0f}"), ("TTFT p90 ms", "p90_ttft_ms", "{:.0f}"),
           ("goodput req/s", "request_goodput", "{:.2f}"),
           ("max/mean req", "load_imbalance_requests", "{:.2f}"),
           ("sustained", "sustained", "{}"))


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = ["-" if row.get(k) is None else fmt.format(row[k]) for _, k, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The targets at the highest rate both ours and the adapter-blind router sustain."""
    by = {(r["router"], r["rate"]): r for r in rows}
    both = [rate for (router, rate) in by if router == OURS
            and by[(OURS, rate)]["sustained"] and by.get((BLIND, rate), {}).get("sustained")]
    if not both:
        return {"rate": None, "note": "no rate sustained by both"}
    rate = max(both)
    ours, blind, ray = by[(OURS, rate)], by[(BLIND, rate)], by.get((RAY, rate), {})
    return {"rate": rate,
            "ttft_p90_vs_blind": ours["p90_ttft_ms"] / blind["p90_ttft_ms"],
            "adapter_hit_rate": ours["adapter_hit_rate"],
            "max_over_mean": ours["load_imbalance_requests"],
            "goodput": ours["request_goodput"], "ray_goodput": ray.get("request_goodput")}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from llmserve.llm.tiny_model import cached_tiny_model

    tiny = cached_tiny_model(num_loras=3)
    model_dir = args.model_dir or str(tiny)
    args.result_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmserve-lora-bench-") as tmp:
        lora_dir = adapter_folder(tiny / "loras" / "lora-0", args.adapters, Path(tmp))
        for rate in args.rates:
            workload = make_workload(args, model_dir, rate)
            for router in args.routers:
                try:
                    rows.append(run_one(args, model_dir, lora_dir, workload, router, rate))
                except Exception as exc:  # say which run failed and go on with the others
                    print(f"{router} at {rate:g} req/s failed: {exc!r}", flush=True)
    table = markdown_table(rows)
    found = verdict(rows)
    (args.result_dir / "summary.md").write_text(table)
    (args.result_dir / "summary.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "slo_ms": SLO_MS, "rows": rows,
         "verdict": found}, indent=1))
    print(table)
    print(json.dumps(found))
    print(f"wrote {args.result_dir} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
