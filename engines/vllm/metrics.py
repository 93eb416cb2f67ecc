"""Read vLLM's Prometheus ``/metrics`` (names as in ``vllm/v1/metrics/loggers.py``, 0.32)."""

from __future__ import annotations

from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from engines.protocol import EngineStats

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
LORA_INFO = "vllm:lora_requests_info"


def parse_vllm_stats(metrics_text: str) -> EngineStats:
    """Sum the load metrics over engines (data parallel ranks); average KV-cache usage.

    ``vllm:lora_requests_info`` has one sample per state seen, valued by the time it
    was set: the newest sample names the adapters running and waiting now.
    """
    sums: dict[str, float] = defaultdict(float)
    kv_usages: list[float] = []
    lora_latest: tuple[float, dict[str, str]] | None = None
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == KV_CACHE_USAGE:
                kv_usages.append(sample.value)
            elif sample.name == LORA_INFO:
                if lora_latest is None or sample.value > lora_latest[0]:
                    lora_latest = (sample.value, sample.labels)
            elif sample.name in (RUNNING, WAITING, PREFIX_QUERIES, PREFIX_HITS):
                sums[sample.name] += sample.value
    lora_labels = lora_latest[1] if lora_latest else {}
    return EngineStats(
        num_running=int(sums[RUNNING]),
        num_waiting=int(sums[WAITING]),
        kv_cache_usage=sum(kv_usages) / len(kv_usages) if kv_usages else 0.0,
        prefix_cache_queries=int(sums[PREFIX_QUERIES]),
        prefix_cache_hits=int(sums[PREFIX_HITS]),
        running_lora_adapters=_names(lora_labels.get("running_lora_adapters", "")),
        waiting_lora_adapters=_names(lora_labels.get("waiting_lora_adapters", "")),
    )


def _names(joined: str) -> tuple[str, ...]:
    return tuple(name for name in joined.split(",") if name)
