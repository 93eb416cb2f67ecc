"""The vLLM metrics a router or benchmark reads, with vLLM 0.32's names, labels and buckets.

Names from ``vllm/v1/metrics/loggers.py``; buckets from ``vllm/v1/metrics/buckets.py``.
Counters are exposed with prometheus' ``_total`` suffix, as vLLM's are
(``vllm:prefix_cache_queries_total``). Each replica has its own registry.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TIME_TO_FIRST_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
INTER_TOKEN_LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

FINISHED_REASONS = ("stop", "length", "abort")


class EngineMetrics:
    """One replica's vLLM-named metrics (labels ``model_name`` and ``engine``)."""

    def __init__(self, model_name: str, max_loras: int = 0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.max_loras = max_loras
        names = ["model_name", "engine"]
        values = {"model_name": model_name, "engine": "0"}
        reg = self.registry
        self.num_running = Gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.",
            names, registry=reg,
        ).labels(**values)  # fmt: skip
        self.num_waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
            names, registry=reg,
        ).labels(**values)  # fmt: skip
        self.kv_cache_usage = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
            names, registry=reg,
        ).labels(**values)  # fmt: skip
        self.prefix_cache_queries = Counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            names, registry=reg,
        ).labels(**values)  # fmt: skip
        self.prefix_cache_hits = Counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
            names, registry=reg,
        ).labels(**values)  # fmt: skip
        self.external_prefix_cache_hits = Counter(
            "vllm:external_prefix_cache_hits",
            "External prefix cache hits from KV connector cross-instance cache sharing, in "
            "terms of number of cached tokens.", names, registry=reg,
        ).labels(**values)  # fmt: skip
        self.num_preemptions = Counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.",
            names, registry=reg,
        ).labels(**values)  # fmt: skip
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", names, registry=reg
        ).labels(**values)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.",
            names, registry=reg,
        ).labels(**values)  # fmt: skip
        success = Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            [*names, "finished_reason"], registry=reg,
        )  # fmt: skip
        self.request_success = {
            reason: success.labels(**values, finished_reason=reason) for reason in FINISHED_REASONS
        }
        self.time_to_first_token = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            names, registry=reg, buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
        ).labels(**values)  # fmt: skip
        self.inter_token_latency = Histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            names, registry=reg, buckets=INTER_TOKEN_LATENCY_BUCKETS,
        ).labels(**values)  # fmt: skip
        self.e2e_latency = Histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
            names, registry=reg, buckets=REQUEST_LATENCY_BUCKETS,
        ).labels(**values)  # fmt: skip
        self._lora_info = Gauge(
            "vllm:lora_requests_info", "Running stats on lora requests.",
            ["max_lora", "waiting_lora_adapters", "running_lora_adapters"], registry=reg,
        )  # fmt: skip

    def set_lora_info(self, running: Iterable[str], waiting: Iterable[str], now_s: float) -> None:
        self._lora_info.clear()
        self._lora_info.labels(
            max_lora=str(self.max_loras),
            waiting_lora_adapters=",".join(sorted(set(waiting))),
            running_lora_adapters=",".join(sorted(set(running))),
        ).set(now_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
