"""Prometheus metrics of LoRA adapter serving, labelled by ``model_name``: the adapter's
id, except for the adapters resident on a replica (the base model's id and the replica)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LOAD_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class LoraMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
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
        self.resident = Gauge("llmserve_lora_adapters_resident",
                              "Adapters resident on each engine replica",
                              ["model_name", "replica"], registry=r)
