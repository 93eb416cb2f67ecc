"""Per-replica gauges, read from the engine pools at scrape time: a replica's series
exist exactly while it is a member of its model's pool, and vanish when it leaves.

Rendered straight to Prometheus text (not through prometheus_client's collector, which
costs ~20 µs a sample here): 64 replicas' seven series in a fraction of a millisecond.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from llmserve.openai.pool import Endpoint, ModelPool


@dataclass(frozen=True)
class ReplicaMetric:
    name: str  # as exposed (a counter's with ``_total``)
    type: str
    help: str
    value: Callable[[ModelPool, Endpoint], float]


REPLICA_METRICS = (
    ReplicaMetric("llmserve_replica_ready", "gauge",
                  "1 when the gateway routes to the replica, else 0",
                  lambda pool, e: 1.0 if e.ready else 0.0),
    ReplicaMetric("llmserve_replica_requests_in_flight", "gauge",
                  "Requests the gateway has in flight at the replica",
                  lambda pool, e: pool.in_flight_of(e)),
    ReplicaMetric("llmserve_engine_requests_running", "gauge",
                  "Running requests, as the replica's engine last reported",
                  lambda pool, e: e.stats.num_running),
    ReplicaMetric("llmserve_engine_requests_waiting", "gauge",
                  "Waiting requests, as the replica's engine last reported",
                  lambda pool, e: e.stats.num_waiting),
    ReplicaMetric("llmserve_engine_kv_cache_usage_ratio", "gauge",
                  "KV-cache usage (0..1), as the replica's engine last reported",
                  lambda pool, e: e.stats.kv_cache_usage),
    ReplicaMetric("llmserve_engine_restarts_total", "counter",
                  "Times the replica restarted its engine process after it exited",
                  lambda pool, e: e.restarts),
)


def render_replica_metrics(pools: Mapping[str, ModelPool]) -> bytes:
    """The per-model in-flight gauge and the per-replica series, in text format 0.0.4."""
    lines = ["# HELP llmserve_requests_in_flight Requests the gateway is serving, by model",
             "# TYPE llmserve_requests_in_flight gauge"]
    lines += [f'llmserve_requests_in_flight{{model_name="{_escape(model)}"}} '
              f"{_number(pool.in_flight)}" for model, pool in pools.items()]
    members = [(pool, endpoint, f'model_name="{_escape(model)}",replica="{_escape(key)}"')
               for model, pool in pools.items() for key, endpoint in pool.endpoints.items()]
    for metric in REPLICA_METRICS:
        lines.append(f"# HELP {metric.name} {metric.help}")
        lines.append(f"# TYPE {metric.name} {metric.type}")
        value = metric.value
        lines += [f"{metric.name}{{{labels}}} {_number(value(pool, endpoint))}"
                  for pool, endpoint, labels in members]
    lines.append("")
    return "\n".join(lines).encode()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    value = float(value)
    if math.isfinite(value):
        return repr(value)
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
