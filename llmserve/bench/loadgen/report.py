"""The result JSON of one run: vLLM's fields, replica metrics, client CPU, publish flag."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from llmserve.bench.loadgen.cpu import MAX_CLIENT_CPU_UTIL
from llmserve.bench.loadgen.replica_metrics import cluster_summary, replica_delta
from llmserve.bench.loadgen.runner import LoadConfig, RunResult
from llmserve.bench.loadgen.stats import per_request_arrays, summarize
from llmserve.bench.workloads.base import Workload


def replica_section(config: LoadConfig, run: RunResult) -> dict[str, Any]:
    if not config.metrics_urls:
        return {"prefix_cache_hit_rate": None, "load_imbalance_requests": None,
                "load_imbalance_tokens": None, "replicas": []}
    loads = [replica_delta(url, before, after) for url, before, after in
             zip(config.metrics_urls, run.metrics_before, run.metrics_after, strict=True)]
    return cluster_summary(loads)


def build_result(workload: Workload, config: LoadConfig, run: RunResult, *,
                 slo_ms: Mapping[str, float] | None = None, label: str = "",
                 max_client_cpu_util: float = MAX_CLIENT_CPU_UTIL) -> dict[str, Any]:
    scale = config.time_scale
    result: dict[str, Any] = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": "openai-chat" if config.endpoint.endswith("chat/completions") else "openai",
        "label": label,
        "model_id": config.model,
        "base_url": config.base_url,
        "endpoint": config.endpoint,
        "workload": workload.name,
        "workload_params": dict(workload.params),
        "num_prompts": workload.num_requests,
        "num_sessions": len(workload.sessions),
        "request_rate": config.qps if config.qps is not None else "inf",
        "max_concurrency": config.concurrency,
        "mode": config.mode,
        "time_scale": scale,
        "time_unit": "simulated" if scale != 1.0 else "real",
        "load_config": {k: v for k, v in asdict(config).items() if k != "api_key"},
    }
    result.update(summarize(run.records, run.duration_s, slo_ms, scale))
    result.update(replica_section(config, run))
    result["replica_load_samples"] = [
        {"t": t * scale, "running_plus_waiting": values} for t, values in run.load_samples]
    util = run.client_cpu_util
    result.update({
        "wall_duration_s": run.duration_s,
        "client_cpu_s": run.client_cpu_s,
        "client_cpu_util": util,
        "client_cpu_limit": max_client_cpu_util,
        "published": util <= max_client_cpu_util and not math.isnan(util),
    })
    if not result["published"]:
        result["unpublished_reason"] = (
            f"the load generator used {util:.0%} of a core (limit {max_client_cpu_util:.0%}): "
            "the client, not the server, may have set the pace")
    result.update(per_request_arrays(run.records, scale))
    return result


def result_name(result: Mapping[str, Any]) -> str:
    label = str(result.get("label") or result["workload"])
    return f"{label}-{result['date']}".replace("/", "_").replace(" ", "_")


def write_result(result: Mapping[str, Any], result_dir: Path, name: str | None = None) -> Path:
    result_dir.mkdir(parents=True, exist_ok=True)
    path = result_dir / f"{name or result_name(result)}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    return path


HEADLINE = (
    ("completed", "{:d}"), ("failed", "{:d}"), ("duration", "{:.2f} s"),
    ("request_throughput", "{:.2f} req/s"), ("request_goodput", "{:.2f} req/s"),
    ("output_throughput", "{:.1f} tok/s"), ("total_token_throughput", "{:.1f} tok/s"),
    ("median_ttft_ms", "{:.1f} ms"), ("p99_ttft_ms", "{:.1f} ms"),
    ("median_tpot_ms", "{:.2f} ms"), ("p99_tpot_ms", "{:.2f} ms"),
    ("median_itl_ms", "{:.2f} ms"), ("p99_e2el_ms", "{:.1f} ms"),
    ("prefix_cache_hit_rate", "{:.3f}"), ("load_imbalance_requests", "{:.2f}"),
    ("client_cpu_util", "{:.1%}"), ("published", "{}"),
)


def format_summary(result: Mapping[str, Any]) -> str:
    lines = [f"==== {result.get('label') or result['workload']} "
             f"({result['time_unit']} time, x{result['time_scale']:g}) ===="]
    for key, fmt in HEADLINE:
        value = result.get(key)
        if value is None:
            continue
        lines.append(f"{key:<28} {fmt.format(value)}")
    if result.get("errors_by_status"):
        lines.append(f"{'errors_by_status':<28} {result['errors_by_status']}")
    return "\n".join(lines)
