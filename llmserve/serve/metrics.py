"""The serving core's Prometheus metrics, as Ray Serve's ``serve_*`` metrics.

Per deployment: requests, errors and their latency (counted where a handle call or an
HTTP request through the proxy reaches a replica), queued and ongoing requests, replicas
by state, and the autoscaler's desired replica count against the running ones. The
gauges are read from the controller at scrape time, so a deleted deployment's series go
with it. One registry per process: :data:`SERVE_REGISTRY`.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
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


def observe_request(application: str, deployment: str) -> _Observed:
    """Count one request to a replica; a replica that never started it is not counted.
    A context manager around the call (a class, not a generator: it runs per request)."""
    series = _SERIES.get((application, deployment))
    if series is None:
        series = _SERIES[(application, deployment)] = (
            REQUESTS.labels(application, deployment), ERRORS.labels(application, deployment),
            LATENCY.labels(application, deployment))
    return _Observed(series)


# each deployment's children of the three metrics (labels() takes a lock and builds a key)
_SERIES: dict[tuple[str, str], tuple[Counter, Counter, Histogram]] = {}


class _Observed:
    __slots__ = ("series", "started_s")

    def __init__(self, series: tuple[Counter, Counter, Histogram]) -> None:
        self.series = series
        self.started_s = 0.0

    def __enter__(self) -> None:
        self.started_s = time.monotonic()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: object) -> None:
        if kind is not None and issubclass(kind, ReplicaUnavailableError):
            return  # never started there: the caller retries elsewhere
        requests, errors, latency = self.series
        if kind is not None:
            errors.inc()
        requests.inc()
        latency.observe(time.monotonic() - self.started_s)


@dataclass(frozen=True)
class DeploymentFigures:
    """One deployment's gauges as its controller sees them (plain data: on the Ray runtime
    the controller actor sends them to every gateway process)."""

    application: str
    deployment: str
    queued: float
    ongoing: float
    replicas: tuple[tuple[str, int], ...]  # (state, count) for every `ReplicaState`
    desired: int
    running: int


def figures_of(deployments: Mapping[tuple[str, str], DeploymentState],
               remote_queued: Mapping[tuple[str, str], float] | None = None
               ) -> tuple[DeploymentFigures, ...]:
    """The gauges of a controller's deployments. ``remote_queued``: requests queued at
    routers in other processes (Ray runtime), whose load the controller already counts."""
    found = []
    for (app, name), state in sorted(deployments.items()):
        queued = state.router.num_queued + (remote_queued or {}).get((app, name), 0.0)
        counts = dict.fromkeys(ReplicaState, 0)
        for record in state.replicas:
            counts[record.state] += 1
        found.append(DeploymentFigures(
            app, name, queued, max(state.router.load - queued, 0.0),
            tuple((s.value, n) for s, n in counts.items()), state.target_replicas,
            counts[ReplicaState.RUNNING]))
    return tuple(found)


def controller_id() -> str:
    """The ``controller`` label: this process, where a controller runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


class DeploymentCollector(Collector):
    """Gauges of one controller's deployments, read when scraped.

    Labelled with the ``controller`` they come from: on Ray every gateway process exports
    the same controller's figures, and queries take the max over one controller."""

    def __init__(self, figures: Callable[[], tuple[str, Iterable[DeploymentFigures]]]):
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        labels = [*LABELS, "controller"]
        queued = GaugeMetricFamily("llmserve_serve_deployment_queued_requests",
                                   "Requests waiting for a free replica slot", labels=labels)
        ongoing = GaugeMetricFamily(
            "llmserve_serve_deployment_ongoing_requests",
            "Requests the deployment's replicas are serving (incl. reported by the gateway)",
            labels=labels)
        replicas = GaugeMetricFamily("llmserve_serve_deployment_replicas",
                                     "Replicas by state", labels=[*LABELS, "state", "controller"])
        desired = GaugeMetricFamily("llmserve_serve_autoscaling_desired_replicas",
                                    "Replicas the controller (and autoscaler) wants",
                                    labels=labels)
        running = GaugeMetricFamily("llmserve_serve_autoscaling_running_replicas",
                                    "Replicas running now", labels=labels)
        controller, figures = self.figures()
        for f in figures:
            queued.add_metric([f.application, f.deployment, controller], f.queued)
            ongoing.add_metric([f.application, f.deployment, controller], f.ongoing)
            for replica_state, count in f.replicas:
                replicas.add_metric([f.application, f.deployment, replica_state, controller],
                                    count)
            desired.add_metric([f.application, f.deployment, controller], f.desired)
            running.add_metric([f.application, f.deployment, controller], f.running)
        yield from (queued, ongoing, replicas, desired, running)


def watch_figures(figures: Callable[[], tuple[str, Iterable[DeploymentFigures]]]) -> None:
    """Export these deployment gauges (``(controller id, figures)``) from this process,
    in place of any exported before: the latest controller, or its copy, wins."""
    global _collector
    if _collector is not None:
        SERVE_REGISTRY.unregister(_collector)
    _collector = DeploymentCollector(figures)
    SERVE_REGISTRY.register(_collector)


def watch_controller(deployments: Callable[[], Mapping[tuple[str, str], DeploymentState]]
                     ) -> None:
    """Export the gauges of this process's controller (the latest one to start)."""
    here = controller_id()
    watch_figures(lambda: (here, figures_of(deployments())))


_collector: DeploymentCollector | None = None
