"""The serving core's Prometheus metrics, as Ray Serve's ``serve_*`` metrics.

Per deployment: requests, errors and their latency (counted where a handle call or an
HTTP request through the proxy reaches a replica), queued and ongoing requests, replicas
by state, and the autoscaler's desired replica count against the running ones. The
gauges are read from the controller at scrape time, so a deleted deployment's series go
with it. One registry per process: :data:`SERVE_REGISTRY`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmserve.serve.exceptions import ReplicaUnavailableError
from llmserve.serve.status import ReplicaState

if TYPE_CHECKING:
    from llmserve.serve.deployment_state import DeploymentState

LABELS = ["application", "deployment"]
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0, 30.0, 60.0, 300.0, 600.0)

SERVE_REGISTRY = CollectorRegistry()
REQUESTS = Counter("llmserve_serve_deployment_requests",
                   "Requests that reached a replica of the deployment", LABELS,
                   registry=SERVE_REGISTRY)
ERRORS = Counter("llmserve_serve_deployment_errors",
                 "Requests that raised an exception in the deployment", LABELS,
                 registry=SERVE_REGISTRY)
LATENCY = Histogram("llmserve_serve_deployment_processing_latency_seconds",
                    "Time a replica of the deployment took to answer (streams: to the end)",
                    LABELS, buckets=LATENCY_BUCKETS_S, registry=SERVE_REGISTRY)


@contextmanager
def observe_request(application: str, deployment: str) -> Iterator[None]:
    """Count one request to a replica; a replica that never started it is not counted."""
    started = time.monotonic()
    try:
        yield
    except ReplicaUnavailableError:
        raise
    except BaseException:
        ERRORS.labels(application, deployment).inc()
        _finish(application, deployment, started)
        raise
    _finish(application, deployment, started)


def _finish(application: str, deployment: str, started_s: float) -> None:
    REQUESTS.labels(application, deployment).inc()
    LATENCY.labels(application, deployment).observe(time.monotonic() - started_s)


class DeploymentCollector(Collector):
    """Gauges read from the controller's deployments when scraped."""

    def __init__(self, deployments: Callable[[], Mapping[tuple[str, str], DeploymentState]]):
        self.deployments = deployments

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily("llmserve_serve_deployment_queued_requests",
                                   "Requests waiting for a free replica slot", labels=LABELS)
        ongoing = GaugeMetricFamily(
            "llmserve_serve_deployment_ongoing_requests",
            "Requests the deployment's replicas are serving (incl. reported by the gateway)",
            labels=LABELS)
        replicas = GaugeMetricFamily("llmserve_serve_deployment_replicas",
                                     "Replicas by state", labels=[*LABELS, "state"])
        desired = GaugeMetricFamily("llmserve_serve_autoscaling_desired_replicas",
                                    "Replicas the controller (and autoscaler) wants",
                                    labels=LABELS)
        running = GaugeMetricFamily("llmserve_serve_autoscaling_running_replicas",
                                    "Replicas running now", labels=LABELS)
        for (app, name), state in sorted(self.deployments().items()):
            labels = [app, name]
            queued.add_metric(labels, state.router.num_queued)
            ongoing.add_metric(labels, state.router.load - state.router.num_queued)
            counts = dict.fromkeys(ReplicaState, 0)
            for record in state.replicas:
                counts[record.state] += 1
            for replica_state, count in counts.items():
                replicas.add_metric([*labels, replica_state.value], count)
            desired.add_metric(labels, state.target_replicas)
            running.add_metric(labels, counts[ReplicaState.RUNNING])
        yield from (queued, ongoing, replicas, desired, running)


def watch_controller(deployments: Callable[[], Mapping[tuple[str, str], DeploymentState]]
                     ) -> None:
    """Export the gauges of this process's controller (the latest one to start)."""
    global _collector
    if _collector is not None:
        SERVE_REGISTRY.unregister(_collector)
    _collector = DeploymentCollector(deployments)
    SERVE_REGISTRY.register(_collector)


_collector: DeploymentCollector | None = None
