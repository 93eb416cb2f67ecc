from __future__ import annotations

import pytest

from llmserve.bench.loadgen.records import RequestRecord
from llmserve.bench.loadgen.stats import (
    distribution,
    parse_goodput,
    summarize,
    tokens_per_second,
)


def record(start: float, ttft: float, latency: float, out: int, prompt: int = 100,
           status: int = 200, itl: list[float] | None = None) -> RequestRecord:
    return RequestRecord("s", start_s=start, ttft_s=ttft, latency_s=latency, output_tokens=out,
                         prompt_tokens=prompt, status=status, itl_s=itl or [],
                         error="" if status == 200 else "boom")


def test_distribution_matches_numpy_linear_percentiles() -> None:
    out = distribution("ttft", [0.05, 0.01, 0.03, 0.02, 0.04])
    assert out["mean_ttft_ms"] == pytest.approx(30.0)
    assert out["median_ttft_ms"] == pytest.approx(30.0)
    assert out["p50_ttft_ms"] == pytest.approx(30.0)
    assert out["p90_ttft_ms"] == pytest.approx(46.0)
    assert out["p99_ttft_ms"] == pytest.approx(49.6)
    assert out["std_ttft_ms"] == pytest.approx(14.142135, rel=1e-6)


def test_distribution_of_nothing_is_zero() -> None:
    assert distribution("itl", [])["p99_itl_ms"] == 0.0


def test_summary_counts_tokens_and_throughputs() -> None:
    records = [
        record(0.0, 0.1, 1.0, 10, itl=[0.1] * 9),
        record(0.5, 0.2, 1.5, 20, prompt=300, itl=[0.05] * 19),
        record(1.0, 0.0, 0.1, 0, prompt=0, status=503),
        record(1.1, 0.0, 0.1, 0, prompt=0, status=0),
    ]
    out = summarize(records, duration_s=2.0)
    assert out["completed"] == 2
    assert out["failed"] == 2
    assert out["errors_by_status"] == {"0": 1, "503": 1}
    assert out["total_input_tokens"] == 400
    assert out["total_output_tokens"] == 30
    assert out["request_throughput"] == pytest.approx(1.0)
    assert out["output_throughput"] == pytest.approx(15.0)
    assert out["total_token_throughput"] == pytest.approx(215.0)
    # TPOT: (1.0 - 0.1) / 9 = 100 ms and (1.5 - 0.2) / 19 = 68.42 ms
    assert out["mean_tpot_ms"] == pytest.approx((100.0 + 1300 / 19) / 2)
    assert out["median_ttft_ms"] == pytest.approx(150.0)
    assert out["mean_itl_ms"] == pytest.approx((9 * 100 + 19 * 50) / 28)
    assert out["median_e2el_ms"] == pytest.approx(1250.0)
    assert out["request_goodput"] is None


def test_goodput_counts_requests_within_every_slo() -> None:
    records = [
        record(0.0, 0.1, 1.0, 10),  # ttft 100 ms, tpot 100 ms
        record(0.0, 0.3, 0.5, 5),  # ttft 300 ms, tpot 50 ms
        record(0.0, 0.05, 0.05, 1),  # one token: tpot counts as 0
    ]
    out = summarize(records, 1.0, parse_goodput(["ttft:200", "tpot:100"]))
    assert out["request_goodput"] == pytest.approx(2.0)
    out = summarize(records, 1.0, {"tpot": 60.0})
    assert out["request_goodput"] == pytest.approx(2.0)
    out = summarize(records, 1.0, {"e2el": 100.0})
    assert out["request_goodput"] == pytest.approx(1.0)


def test_time_scale_reports_simulated_time() -> None:
    records = [record(0.0, 0.1, 1.0, 10, itl=[0.1] * 9)]
    real = summarize(records, 2.0)
    simulated = summarize(records, 2.0, time_scale=4.0)
    assert simulated["duration"] == pytest.approx(8.0)
    assert simulated["median_ttft_ms"] == pytest.approx(4 * real["median_ttft_ms"])
    assert simulated["mean_tpot_ms"] == pytest.approx(4 * real["mean_tpot_ms"])
    assert simulated["output_throughput"] == pytest.approx(real["output_throughput"] / 4)


def test_tokens_per_second_buckets_each_chunk() -> None:
    # first token at 0.5 s, then 0.3 s apart: 0.5, 0.8, 1.1, 1.4
    records = [record(0.0, 0.5, 1.4, 4, itl=[0.3, 0.3, 0.3])]
    assert tokens_per_second(records) == [2.0, 2.0, 0.0]  # up to ceil(end) inclusive


def test_tokens_per_second_spreads_usage_over_chunks() -> None:
    records = [record(0.0, 0.5, 1.1, 6, itl=[0.6])]  # 6 tokens in 2 chunks: 0.5 s, 1.1 s
    assert tokens_per_second(records) == [3.0, 3.0, 0.0]


@pytest.mark.parametrize("bad", ["ttft", "speed:10", "tpot:-1", "ttft:abc"])
def test_parse_goodput_rejects_bad_items(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_goodput([bad])
