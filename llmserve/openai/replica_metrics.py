"""Per-replica gauges, read from the engine pools at scrape time: a replica's series
exist exactly while it is a member of its model's pool, and vanish when it leaves."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmserve.openai.pool import ModelPool

LABELS = ["model_name", "replica"]


class ReplicaCollector(Collector):
    def __init__(self, pools: Mapping[str, ModelPool]) -> None:
        self.pools = pools

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "llmserve_requests_in_flight", "Requests the gateway is serving, by model",
            labels=["model_name"])
        ready = GaugeMetricFamily(
            "llmserve_replica_ready", "1 when the gateway routes to the replica, else 0",
            labels=LABELS)
        routed = GaugeMetricFamily(
            "llmserve_replica_requests_in_flight",
            "Requests the gateway has in flight at the replica", labels=LABELS)
        running = GaugeMetricFamily(
            "llmserve_engine_requests_running",
            "Running requests, as the replica's engine last reported", labels=LABELS)
        waiting = GaugeMetricFamily(
            "llmserve_engine_requests_waiting",
            "Waiting requests, as the replica's engine last reported", labels=LABELS)
        kv_usage = GaugeMetricFamily(
            "llmserve_engine_kv_cache_usage_ratio",
            "KV-cache usage (0..1), as the replica's engine last reported", labels=LABELS)
        restarts = CounterMetricFamily(
            "llmserve_engine_restarts",
            "Times the replica restarted its engine process after it exited", labels=LABELS)
        for model, pool in self.pools.items():
            in_flight.add_metric([model], pool.in_flight)
            for endpoint in pool.endpoints.values():
                labels = [model, endpoint.key]
                stats = endpoint.stats
                ready.add_metric(labels, 1.0 if endpoint.ready else 0.0)
                routed.add_metric(labels, pool.in_flight_of(endpoint))
                running.add_metric(labels, stats.num_running)
                waiting.add_metric(labels, stats.num_waiting)
                kv_usage.add_metric(labels, stats.kv_cache_usage)
                restarts.add_metric(labels, endpoint.restarts)
        yield from (in_flight, ready, routed, running, waiting, kv_usage, restarts)
