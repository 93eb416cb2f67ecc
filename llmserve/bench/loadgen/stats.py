"""Summary statistics over request records, named as ``vllm bench serve`` names them.

Percentiles interpolate linearly between ranks (numpy's default, as vLLM's), computed
here without numpy so a plain install runs ``llmserve bench``. TPOT of a request is
``(latency - ttft) / (output_tokens - 1)``; one-token replies are left out of the TPOT
statistics and count as TPOT 0 for goodput, as in vLLM. ``time_scale`` multiplies every
duration (a simulator running X times faster than real time reports simulated time).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from llmserve.bench.loadgen.records import RequestRecord

PERCENTILES = (50.0, 90.0, 99.0)
SLO_METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(items: Iterable[str]) -> dict[str, float]:
    """``["ttft:200", "tpot:50"]`` -> ``{"ttft": 200.0, "tpot": 50.0}`` (milliseconds)."""
    slo: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or name not in SLO_METRICS:
            raise ValueError(f"bad --goodput item {item!r}; use NAME:MS with NAME one of "
                             f"{', '.join(SLO_METRICS)}")
        ms = float(value)
        if ms < 0:
            raise ValueError(f"--goodput {name} must be >= 0 ms")
        slo[name] = ms
    return slo


def scale_record(record: RequestRecord, factor: float) -> RequestRecord:
    if factor == 1.0:
        return record
    return replace(record, start_s=record.start_s * factor, ttft_s=record.ttft_s * factor,
                   latency_s=record.latency_s * factor,
                   itl_s=[gap * factor for gap in record.itl_s])


def distribution(name: str, values_s: Sequence[float],
                 percentiles: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """``mean_/median_/std_/p<P>_<name>_ms`` (all 0 for no values, as vLLM)."""
    data = sorted(float(v) * 1000.0 for v in (values_s if len(values_s) else [0.0]))
    out = {f"mean_{name}_ms": statistics.fmean(data),
           f"median_{name}_ms": percentile(data, 50.0),
           f"std_{name}_ms": statistics.pstdev(data)}
    for p in percentiles:
        word = str(int(p)) if int(p) == p else str(p)
        out[f"p{word}_{name}_ms"] = percentile(data, p)
    return out


def percentile(ordered: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of sorted values, linear between ranks (numpy's default)."""
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def is_good(record: RequestRecord, slo_ms: Mapping[str, float]) -> bool:
    measured = {"ttft": record.ttft_s, "tpot": record.tpot_s, "e2el": record.latency_s}
    return all(measured[name] * 1000.0 <= limit for name, limit in slo_ms.items())


def tokens_per_second(records: Sequence[RequestRecord]) -> list[float]:
    """Output tokens per one-second bucket from the first send (content chunks; when usage
    reports more tokens than chunks, each chunk carries its share)."""
    ok = [r for r in records if r.success]
    if not ok:
        return []
    end = max(r.start_s + r.latency_s for r in ok)
    buckets = [0.0] * (math.ceil(end) + 1)
    for record in ok:
        times = record.token_times_s()
        if not times:
            continue
        share = record.output_tokens / len(times)
        for at in times:
            buckets[int(at)] += share
    return [float(v) for v in buckets]


def concurrency_per_second(records: Sequence[RequestRecord]) -> list[int]:
    ok = [r for r in records if r.success]
    if not ok:
        return []
    end = max(r.start_s + r.latency_s for r in ok)
    counts = [0] * (math.ceil(end) + 1)
    for record in ok:
        for second in range(int(record.start_s), int(record.start_s + record.latency_s) + 1):
            counts[second] += 1
    return counts


def summarize(records: Sequence[RequestRecord], duration_s: float,
              slo_ms: Mapping[str, float] | None = None, time_scale: float = 1.0,
              percentiles: Sequence[float] = PERCENTILES) -> dict[str, Any]:
    scaled = [scale_record(r, time_scale) for r in records]
    duration = duration_s * time_scale
    ok = [r for r in scaled if r.success]
    failed = [r for r in scaled if not r.success]
    total_input = sum(r.prompt_tokens for r in ok)
    total_output = sum(r.output_tokens for r in ok)
    per_s = 1.0 / duration if duration > 0 else 0.0
    good = sum(1 for r in ok if is_good(r, slo_ms)) if slo_ms else 0
    tps = tokens_per_second(scaled)
    out: dict[str, Any] = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(failed),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(ok) * per_s,
        "request_goodput": good * per_s if slo_ms else None,
        "output_throughput": total_output * per_s,
        "total_token_throughput": (total_input + total_output) * per_s,
        "max_output_tokens_per_s": max(tps, default=0.0),
        "max_concurrent_requests": max(concurrency_per_second(scaled), default=0),
        "goodput_slo_ms": dict(slo_ms or {}),
        "errors_by_status": errors_by_status(failed),
    }
    out.update(distribution("ttft", [r.ttft_s for r in ok], percentiles))
    out.update(distribution("tpot", [r.tpot_s for r in ok if r.output_tokens > 1], percentiles))
    out.update(distribution("itl", [gap for r in ok for gap in r.itl_s], percentiles))
    out.update(distribution("e2el", [r.latency_s for r in ok], percentiles))
    out["output_tokens_per_s_series"] = tps
    return out


def errors_by_status(failed: Sequence[RequestRecord]) -> dict[str, int]:
    """Failures counted by HTTP status ("0": no response, e.g. refused or timed out)."""
    return dict(sorted(Counter(str(r.status) for r in failed).items()))


def per_request_arrays(records: Sequence[RequestRecord], time_scale: float = 1.0) -> dict[str, Any]:
    """vLLM's per-request lists (seconds), for re-plotting from the JSON alone."""
    scaled = [scale_record(r, time_scale) for r in records]
    return {
        "input_lens": [r.prompt_tokens for r in scaled],
        "output_lens": [r.output_tokens if r.success else 0 for r in scaled],
        "ttfts": [r.ttft_s for r in scaled],
        "itls": [r.itl_s for r in scaled],
        "latencies": [r.latency_s for r in scaled],
        "start_times": [r.start_s for r in scaled],
        "statuses": [r.status for r in scaled],
        "errors": [r.error for r in scaled],
        "session_ids": [r.session_id for r in scaled],
        "turns": [r.turn for r in scaled],
    }
