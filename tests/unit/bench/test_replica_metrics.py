from __future__ import annotations

import pytest

from llmserve.bench.loadgen.replica_metrics import (
    COUNTERS,
    HITS,
    QUERIES,
    REQUESTS,
    cluster_summary,
    imbalance,
    metrics_url,
    parse_samples,
    replica_delta,
)

TEXT = """# HELP vllm:prefix_cache_queries Prefix cache queries.
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 100.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 50.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e+09
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 60.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 3.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 4.0
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:prompt_tokens_total 1e3
"""


def test_parse_sums_label_sets_and_skips_others() -> None:
    values = parse_samples(TEXT, COUNTERS)
    assert values[QUERIES] == 150.0
    assert values[HITS] == 60.0
    assert values[REQUESTS] == 7.0
    assert values["vllm:prompt_tokens_total"] == 1000.0
    assert values["vllm:generation_tokens_total"] == 0.0


def test_delta_and_cluster_summary() -> None:
    zero = dict.fromkeys(COUNTERS, 0.0)
    a = replica_delta("a", zero, {**zero, QUERIES: 100.0, HITS: 50.0, REQUESTS: 6.0,
                                  "vllm:prompt_tokens_total": 100.0})
    b = replica_delta("b", {**zero, QUERIES: 10.0}, {**zero, QUERIES: 110.0, HITS: 0.0,
                                                     REQUESTS: 2.0,
                                                     "vllm:generation_tokens_total": 300.0})
    assert a.prefix_cache_hit_rate == 0.5
    assert b.prefix_cache_queries == 100.0
    summary = cluster_summary([a, b])
    assert summary["prefix_cache_hit_rate"] == pytest.approx(0.25)
    assert summary["load_imbalance_requests"] == pytest.approx(6 / 4)
    assert summary["load_imbalance_tokens"] == pytest.approx(300 / 200)


def test_imbalance() -> None:
    assert imbalance([5, 5, 5, 5]) == 1.0
    assert imbalance([8, 0, 0, 0]) == 4.0
    assert imbalance([0, 0]) == 0.0


def test_metrics_url() -> None:
    assert metrics_url("http://h:1/") == "http://h:1/metrics"
    assert metrics_url("http://h:1/metrics") == "http://h:1/metrics"
