"""Prometheus metrics of the OpenAI ingress (exposed at ``/metrics``).

Every label value is bounded: ``model_name`` is a configured model (or empty when the
request named none that exists), ``route`` a template from :mod:`llmserve.openai.routes`,
``status`` an HTTP status code. The catalogue is ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Mapping

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from llmserve.openai.pool import ModelPool
from llmserve.openai.relay import Outcome
from llmserve.openai.replica_metrics import render_replica_metrics
from llmserve.serve.metrics import SERVE_REGISTRY
from routing.decision import RoutingDecision, depth_bucket

# vLLM's buckets (vllm/v1/metrics/buckets.py), so gateway and engine histograms compare
TTFT_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
REJECTION_REASONS = {401: "unauthorized", 413: "body_too_large", 429: "too_many_requests",
                     503: "unavailable"}
CLIENT_CLOSED = "499"  # the client left before the answer was complete

# No `_created` series: they double every counter's lines and no dashboard reads them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class IngressMetrics:
    def __init__(self, pools: Mapping[str, ModelPool] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmserve_requests", "Requests by model, route template and HTTP status",
            ["model_name", "route", "status"], registry=r)
        self.e2e_latency = Histogram(
            "llmserve_e2e_request_latency_seconds",
            "From the request's arrival to its last byte sent, as the client sees it",
            ["model_name", "route"], buckets=E2E_BUCKETS_S, registry=r)
        self.ttft = Histogram(
            "llmserve_time_to_first_token_seconds",
            "Streamed requests: from arrival to the first streamed bytes sent to the client",
            ["model_name"], buckets=TTFT_BUCKETS_S, registry=r)
        self.itl = Histogram(
            "llmserve_inter_token_latency_seconds",
            "Streamed requests with usage: mean gap between generated tokens",
            ["model_name"], buckets=ITL_BUCKETS_S, registry=r)
        self.prompt_tokens = Counter(
            "llmserve_prompt_tokens", "Prompt tokens, from the engines' usage reports",
            ["model_name"], registry=r)
        self.generation_tokens = Counter(
            "llmserve_generation_tokens", "Generated tokens, from the engines' usage reports",
            ["model_name"], registry=r)
        self.rejections = Counter(
            "llmserve_rejections",
            "Requests the gateway turned away, by reason (401, 413, 429, 503)",
            ["model_name", "reason"], registry=r)
        self.routing = Counter(
            "llmserve_routing_decisions",
            "Routing decisions by policy, outcome, spilling guard and matched prefix depth",
            ["model_name", "policy", "outcome", "guard", "prefix_depth"], registry=r)
        self.pools = pools or {}

    def record(self, model: str, route: str, outcome: Outcome, now_s: float, *,
               streamed: bool) -> None:
        """A relayed request ended (``route`` is a template)."""
        status = CLIENT_CLOSED if outcome.disconnected else str(outcome.status)
        self.requests.labels(model, route, status).inc()
        self.e2e_latency.labels(model, route).observe(now_s - outcome.started_s)
        usage = outcome.usage or {}
        generated = _count(usage.get("completion_tokens"))
        if outcome.status == 200 and streamed and outcome.first_chunk_s is not None:
            self.ttft.labels(model).observe(outcome.first_chunk_s - outcome.started_s)
            if generated >= 2 and not outcome.disconnected:
                self.itl.labels(model).observe((now_s - outcome.first_chunk_s) / (generated - 1))
        if usage:
            self.prompt_tokens.labels(model).inc(_count(usage.get("prompt_tokens")))
            self.generation_tokens.labels(model).inc(generated)

    def record_local(self, model: str, route: str, status: int) -> None:
        """A request answered by the gateway itself (an error, /v1/models, /health...);
        latency histograms are for relayed requests only."""
        self.requests.labels(model, route, str(status)).inc()
        reason = REJECTION_REASONS.get(status)
        if reason is not None:
            self.rejections.labels(model, reason).inc()

    def record_routing(self, model: str, policy: str, decision: RoutingDecision) -> None:
        self.routing.labels(model, policy, decision.outcome, decision.guard,
                            depth_bucket(decision.matched_tokens)).inc()

    def exposition(self) -> bytes:
        """The gateway's metrics and this process's serving-core metrics."""
        return (generate_latest(self.registry) + render_replica_metrics(self.pools)
                + generate_latest(SERVE_REGISTRY))


def _count(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 0
