"""Read vLLM's Prometheus ``/metrics`` (names as in ``vllm/v1/metrics/loggers.py``, 0.32).

vLLM's exposition runs to hundreds of lines of histograms and the gateway reads it for
every replica twice a second, so this scans for the few samples routing needs with one
compiled regular expression instead of parsing every family (prometheus_client's parser
took a fifth of the gateway's CPU under load).
"""

from __future__ import annotations

import re
from collections import defaultdict

from engines.protocol import EngineStats

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
LORA_INFO = "vllm:lora_requests_info"

_SAMPLE = re.compile(
    r"^(" + "|".join(re.escape(n) for n in
                     (RUNNING, WAITING, KV_CACHE_USAGE, PREFIX_QUERIES, PREFIX_HITS, LORA_INFO))
    + r")(?:\{(.*)\})?[ \t]+(\S+)", re.MULTILINE)
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_vllm_stats(metrics_text: str) -> EngineStats:
    """Sum the load metrics over engines (data parallel ranks); average KV-cache usage.

    ``vllm:lora_requests_info`` has one sample per state seen, valued by the time it
    was set: the newest sample names the adapters running and waiting now.
    """
    sums: dict[str, float] = defaultdict(float)
    kv_usages: list[float] = []
    lora_latest: tuple[float, str] | None = None
    for match in _SAMPLE.finditer(metrics_text):
        name, labels, raw = match.group(1, 2, 3)
        try:
            value = float(raw)
        except ValueError:
            continue
        if name == KV_CACHE_USAGE:
            kv_usages.append(value)
        elif name == LORA_INFO:
            if lora_latest is None or value > lora_latest[0]:
                lora_latest = (value, labels or "")
        else:
            sums[name] += value
    lora_labels = _labels(lora_latest[1]) if lora_latest else {}
    return EngineStats(
        num_running=int(sums[RUNNING]),
        num_waiting=int(sums[WAITING]),
        kv_cache_usage=sum(kv_usages) / len(kv_usages) if kv_usages else 0.0,
        prefix_cache_queries=int(sums[PREFIX_QUERIES]),
        prefix_cache_hits=int(sums[PREFIX_HITS]),
        running_lora_adapters=_names(lora_labels.get("running_lora_adapters", "")),
        waiting_lora_adapters=_names(lora_labels.get("waiting_lora_adapters", "")),
    )


def _labels(text: str) -> dict[str, str]:
    return {key: value.replace('\\"', '"').replace("\\\\", "\\")
            for key, value in _LABEL.findall(text)}


def _names(joined: str) -> tuple[str, ...]:
    return tuple(name for name in joined.split(",") if name)
