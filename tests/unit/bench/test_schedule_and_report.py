from __future__ import annotations

import pytest

from llmserve.bench.loadgen.records import RequestRecord
from llmserve.bench.loadgen.report import build_result, format_summary
from llmserve.bench.loadgen.runner import LoadConfig, RunResult
from llmserve.bench.loadgen.schedule import arrival_times, poisson_arrivals
from llmserve.bench.workloads.base import Session, Turn, Workload


def test_poisson_arrivals_are_seeded_and_at_the_rate() -> None:
    times = poisson_arrivals(4000, 20.0, seed=3)
    assert times == poisson_arrivals(4000, 20.0, seed=3)
    assert times != poisson_arrivals(4000, 20.0, seed=4)
    assert times[0] == 0.0 and times == sorted(times)
    assert len(times) / times[-1] == pytest.approx(20.0, rel=0.05)


def test_infinite_rate_sends_everything_at_once() -> None:
    assert poisson_arrivals(3, float("inf"), 0) == [0.0, 0.0, 0.0]


def test_trace_timestamps_win_over_qps() -> None:
    turn = Turn("x", 1, 1)
    sessions = [Session("a", (turn,), arrival_s=10.0), Session("b", (turn,), arrival_s=12.5)]
    assert arrival_times(sessions, qps=1000.0, seed=0) == [0.0, 2.5]


def run_result(cpu_s: float) -> RunResult:
    records = [RequestRecord("a", start_s=0.0, ttft_s=0.1, latency_s=0.5, output_tokens=5,
                             prompt_tokens=10, status=200, itl_s=[0.1] * 4)]
    before = [{"vllm:request_success_total": 0.0}, {"vllm:request_success_total": 2.0}]
    after = [{"vllm:request_success_total": 3.0}, {"vllm:request_success_total": 3.0}]
    return RunResult(records, duration_s=2.0, client_cpu_s=cpu_s, metrics_before=before,
                     metrics_after=after)


def test_result_is_published_only_below_the_cpu_limit() -> None:
    workload = Workload("random", (Session("a", (Turn("x", 10, 5),)),))
    config = LoadConfig("http://h", "m", metrics_urls=("http://r0", "http://r1"),
                        time_scale=2.0)
    ok = build_result(workload, config, run_result(cpu_s=1.0))
    assert ok["published"] is True
    assert ok["client_cpu_util"] == pytest.approx(0.5)
    assert ok["time_unit"] == "simulated"
    assert ok["duration"] == pytest.approx(4.0)
    assert ok["median_ttft_ms"] == pytest.approx(200.0)
    assert [r["requests"] for r in ok["replicas"]] == [3.0, 1.0]
    assert ok["load_imbalance_requests"] == pytest.approx(1.5)
    assert "published" in format_summary(ok)
    refused = build_result(workload, config, run_result(cpu_s=1.9))
    assert refused["published"] is False
    assert "95%" in refused["unpublished_reason"]
