"""Ingress metrics stay bounded: route templates, per-replica series that leave with
their replica, TTFT only for streamed requests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from llmserve.openai.engine_targets import engine_targets
from llmserve.openai.metrics import IngressMetrics
from llmserve.openai.pool import make_pool
from llmserve.openai.relay import Outcome
from llmserve.openai.routes import UNMATCHED, route_template


def samples(metrics: IngressMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_routes_are_templates_and_unknown_paths_are_one_route() -> None:
    assert route_template("/v1/chat/completions") == "/v1/chat/completions"
    assert route_template("/v1/models/anything/at/all") == "/v1/models/{model}"
    assert {route_template(f"/x{i}") for i in range(50)} == {UNMATCHED}
    assert route_template("/v1/models/") == UNMATCHED


def test_replica_series_vanish_when_the_replica_leaves() -> None:
    pool = make_pool("m", "sim", {"policy": "round_robin"},
                     urls=("http://127.0.0.1:1", "http://127.0.0.1:2"))
    metrics = IngressMetrics({"m": pool})
    replicas = {dict(labels).get("replica") for (name, labels) in samples(metrics)
                if name == "llmserve_engine_requests_running"}
    assert replicas == {"http://127.0.0.1:1", "http://127.0.0.1:2"}
    del pool.endpoints["http://127.0.0.1:2"]  # as refresh_members does when it leaves
    text = metrics.exposition().decode()
    assert "http://127.0.0.1:2" not in text
    assert 'replica="http://127.0.0.1:1"' in text


def test_ttft_only_for_streamed_requests_and_itl_from_usage() -> None:
    metrics = IngressMetrics()
    plain = Outcome(status=200, started_s=10.0, first_chunk_s=12.0,
                    usage={"prompt_tokens": 5, "completion_tokens": 3})
    metrics.record("m", "/v1/completions", plain, 12.0, streamed=False)
    got = samples(metrics)
    assert not any(name.startswith("llmserve_time_to_first_token") for name, _ in got)
    assert got[("llmserve_e2e_request_latency_seconds_sum",
                (("model_name", "m"), ("route", "/v1/completions")))] == 2.0
    streamed = Outcome(status=200, started_s=10.0, first_chunk_s=10.5,
                       usage={"prompt_tokens": 5, "completion_tokens": 5})
    metrics.record("m", "/v1/completions", streamed, 12.5, streamed=True)
    got = samples(metrics)
    key = (("model_name", "m"),)
    assert got[("llmserve_time_to_first_token_seconds_count", key)] == 1
    assert got[("llmserve_time_to_first_token_seconds_sum", key)] == 0.5
    assert got[("llmserve_inter_token_latency_seconds_sum", key)] == 0.5  # 2 s / 4 gaps
    assert got[("llmserve_generation_tokens_total", key)] == 8
    assert got[("llmserve_prompt_tokens_total", key)] == 10
    assert not any(name.endswith("_created") for name, _ in got)


def test_rejections_by_reason() -> None:
    metrics = IngressMetrics()
    for status in (401, 413, 429, 503, 404):
        metrics.record_local("", "/v1/chat/completions", status)
    got = samples(metrics)
    reasons = {dict(labels)["reason"] for name, labels in got
               if name == "llmserve_rejections_total"}
    assert reasons == {"unauthorized", "body_too_large", "too_many_requests", "unavailable"}


def test_engine_targets_follow_log_engine_metrics() -> None:
    pool = make_pool("m", "sim", {"policy": "round_robin"}, urls=("http://10.0.0.1:8001",))
    (group,) = engine_targets({"m": pool}, {"m": True})
    assert group["targets"] == ["10.0.0.1:8001"]
    assert group["labels"]["__metrics_path__"] == "/metrics"
    assert group["labels"]["replica"] == "http://10.0.0.1:8001"
    assert engine_targets({"m": pool}, {"m": False}) == []
