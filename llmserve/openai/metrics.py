"""Prometheus metrics of the OpenAI ingress (exposed at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llmserve.openai.relay import Outcome

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class IngressMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llmserve_requests", "Requests by model, route and status",
                                ["model", "route", "status"], registry=r)
        self.in_flight = Gauge("llmserve_requests_in_flight", "Requests being served",
                               ["model"], registry=r)
        self.latency = Histogram("llmserve_request_duration_seconds", "End-to-end latency",
                                 ["model", "route"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.ttft = Histogram("llmserve_time_to_first_token_seconds",
                              "Time from request to the engine's first response bytes",
                              ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.prompt_tokens = Counter("llmserve_prompt_tokens", "Prompt tokens (from usage)",
                                     ["model"], registry=r)
        self.generation_tokens = Counter("llmserve_generation_tokens",
                                         "Generated tokens (from usage)", ["model"], registry=r)
        self.engine_running = Gauge("llmserve_engine_requests_running",
                                    "Engine-reported running requests", ["model", "replica"],
                                    registry=r)
        self.engine_waiting = Gauge("llmserve_engine_requests_waiting",
                                    "Engine-reported waiting requests", ["model", "replica"],
                                    registry=r)
        self.engine_kv_usage = Gauge("llmserve_engine_kv_cache_usage_ratio",
                                     "Engine-reported KV-cache usage (0..1)",
                                     ["model", "replica"], registry=r)

    def record(self, model: str, route: str, outcome: Outcome, now_s: float) -> None:
        status = "disconnected" if outcome.disconnected else str(outcome.status)
        self.requests.labels(model, route, status).inc()
        self.latency.labels(model, route).observe(now_s - outcome.started_s)
        if outcome.first_chunk_s is not None and outcome.status == 200:
            self.ttft.labels(model).observe(outcome.first_chunk_s - outcome.started_s)
        usage = outcome.usage or {}
        self.prompt_tokens.labels(model).inc(int(usage.get("prompt_tokens") or 0))
        self.generation_tokens.labels(model).inc(int(usage.get("completion_tokens") or 0))

    def record_error(self, model: str, route: str, status: int) -> None:
        self.requests.labels(model or "unknown", route, str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
