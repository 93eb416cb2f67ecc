"""PNG plots of a result (matplotlib, Agg backend): latency CDFs, throughput, replica load."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(result: Mapping[str, Any]) -> str:
    return str(result.get("label") or result["workload"])


def _ok(result: Mapping[str, Any]) -> list[int]:
    return [i for i, s in enumerate(result["statuses"]) if s == 200 and not result["errors"][i]]


def latency_series(result: Mapping[str, Any]) -> dict[str, list[float]]:
    """Per-request latencies in ms, successful requests only."""
    ok = _ok(result)
    ttft = [result["ttfts"][i] * 1000 for i in ok]
    e2el = [result["latencies"][i] * 1000 for i in ok]
    tpot = [(result["latencies"][i] - result["ttfts"][i]) * 1000 / (result["output_lens"][i] - 1)
            for i in ok if result["output_lens"][i] > 1]
    itl = [gap * 1000 for i in ok for gap in result["itls"][i]]
    return {"TTFT": ttft, "TPOT": tpot, "ITL": itl, "E2E latency": e2el}


def plot_latency_cdfs(results: Sequence[Mapping[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for result in results:
        for ax, (name, values) in zip(axes, latency_series(result).items(), strict=True):
            if not values:
                continue
            data = np.sort(np.asarray(values))
            ax.plot(data, np.arange(1, len(data) + 1) / len(data), label=_label(result))
            ax.set_title(f"{name} CDF")
            ax.set_xlabel(f"{name} (ms, {result['time_unit']})")
    for ax in axes:
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(results: Sequence[Mapping[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for result in results:
        series = result.get("output_tokens_per_s_series") or []
        ax.plot(range(len(series)), series, label=_label(result))
    unit = results[0]["time_unit"] if results else "real"
    ax.set_xlabel(f"time since start (s, {unit})")
    ax.set_ylabel("output tokens / s")
    ax.set_title("Output throughput over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_replica_load(results: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Per replica: requests served, tokens served and prefix-cache hit rate; one bar
    group per result."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    width = 0.8 / max(1, len(results))
    for k, result in enumerate(results):
        replicas = result.get("replicas") or []
        x = np.arange(len(replicas)) + k * width
        axes[0].bar(x, [r["requests"] for r in replicas], width, label=_label(result))
        axes[1].bar(x, [r["prompt_tokens"] + r["generation_tokens"] for r in replicas], width)
        axes[2].bar(x, [r["prefix_cache_hit_rate"] for r in replicas], width)
    titles = ("requests served", "tokens served (prompt + generated)", "prefix-cache hit rate")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(f"{title} per replica")
        ax.set_xlabel("replica")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_replica_timeline(result: Mapping[str, Any], path: Path) -> Path:
    """Requests running + waiting on each replica over time (sampled from /metrics)."""
    plt = _pyplot()
    samples = result.get("replica_load_samples") or []
    fig, ax = plt.subplots(figsize=(9, 4.2))
    if samples:
        times = [s["t"] for s in samples]
        for index in range(len(samples[0]["running_plus_waiting"])):
            ax.plot(times, [s["running_plus_waiting"][index] for s in samples],
                    label=f"replica {index}", lw=1)
    ax.set_xlabel(f"time since start (s, {result['time_unit']})")
    ax.set_ylabel("requests running + waiting")
    ax.set_title(f"Per-replica load over time: {_label(result)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(results: Sequence[Mapping[str, Any]], out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_latency_cdfs(results, out_dir / f"{stem}-latency-cdf.png"),
             plot_throughput(results, out_dir / f"{stem}-throughput.png")]
    if any(r.get("replicas") for r in results):
        paths.append(plot_replica_load(results, out_dir / f"{stem}-replica-load.png"))
    for result in results:
        if result.get("replica_load_samples"):
            prefix = _label(result) if len(results) > 1 else stem
            name = f"{prefix}-replica-timeline.png".replace("/", "_")
            paths.append(plot_replica_timeline(result, out_dir / name))
    return paths
