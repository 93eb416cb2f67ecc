"""Prometheus metrics of LoRA adapter serving, labelled by ``model_name``: the adapter's
id, except for the adapters resident on a replica (the base model's id and the replica).

The resident count is read from the live replicas at each scrape, so a replica that went
away (scale-down) has no series left, and one whose engine restarted shows what its new
engine holds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

LOAD_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


# (base model id, replica key, adapters resident there) for every live replica
ResidentCounts = Callable[[], Iterable[tuple[str, str, int]]]


class ResidentAdapters(Collector):
    """``llmserve_lora_adapters_resident``, from the replicas alive at scrape time."""

    def __init__(self, counts: ResidentCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("llmserve_lora_adapters_resident",
                                   "Adapters resident on each engine replica",
                                   labels=["model_name", "replica"])
        for model, replica, count in self.counts():
            family.add_metric([model, replica], count)
        yield family


class LoraMetrics:
    def __init__(self, registry: CollectorRegistry, resident: ResidentCounts) -> None:
        r = registry
        self.loads = Counter("llmserve_lora_adapter_loads",
                             "Adapter loads into an engine replica", ["model_name"], registry=r)
        self.evictions = Counter("llmserve_lora_adapter_evictions",
                                 "Adapters unloaded to make room (least recently used)",
                                 ["model_name"], registry=r)
        self.downloads = Counter("llmserve_lora_adapter_downloads",
                                 "Adapters copied from remote storage into the node's cache",
                                 ["model_name"], registry=r)
        self.load_failures = Counter("llmserve_lora_adapter_load_failures",
                                     "Adapter fetches, checks or engine loads that failed",
                                     ["model_name"], registry=r)
        self.load_seconds = Histogram("llmserve_lora_adapter_load_seconds",
                                      "Time to fetch, check and load an adapter into a replica",
                                      ["model_name"], buckets=LOAD_BUCKETS_S, registry=r)
        self.requests = Counter("llmserve_lora_requests",
                                "Requests per adapter, by whether the adapter was resident",
                                ["model_name", "resident"], registry=r)
        registry.register(ResidentAdapters(resident))
