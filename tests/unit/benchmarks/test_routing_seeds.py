"""The multi-seed comparison: wins per seed and pooled figures, from result dicts."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.routing.seeds import compare, pooled


def run(ttfts_ms: list[float], goodput: float, duration: float = 4.0,
        failed: int = 0) -> dict[str, Any]:
    n = len(ttfts_ms)
    ttfts = [t / 1000 for t in ttfts_ms] + [0.0] * failed
    return {"ttfts": ttfts, "latencies": [t + 0.5 for t in ttfts],
            "output_lens": [64] * n + [0] * failed, "itls": [[]] * (n + failed),
            "statuses": [200] * n + [500] * failed, "errors": [""] * n + ["boom"] * failed,
            "p90_ttft_ms": sorted(ttfts_ms)[int(0.9 * (n - 1))],
            "request_goodput": goodput, "duration": duration}


def test_pooled_p90_is_over_every_request_and_goodput_over_summed_time() -> None:
    a = run([10.0] * 9 + [100.0], goodput=2.0, duration=5.0)  # 10 good in 5 s
    b = run([20.0] * 10, goodput=1.0, duration=10.0, failed=1)  # 10 good in 10 s
    out = pooled([a, b])
    assert out["requests"] == 20  # the failed request is not a TTFT
    assert out["p90_ttft_ms"] == pytest.approx(20.0)  # 18th of 20 (numpy linear): 20 ms
    assert out["goodput"] == pytest.approx(20 / 15)


def test_compare_counts_strict_wins_per_seed() -> None:
    runs = {"ours": {0: run([10.0] * 10, 5.0), 1: run([30.0] * 10, 5.0),
                     2: run([10.0] * 10, 6.0)},
            "theirs": {0: run([20.0] * 10, 4.0), 1: run([20.0] * 10, 5.0),
                       2: run([20.0] * 10, 5.0), 3: run([1.0] * 10, 9.0)}}
    table = compare(runs)
    assert table["seeds"] == [0, 1, 2]  # seed 3 has no pair
    assert table["wins"] == {"ours": {"p90": 2, "goodput": 2},
                             "theirs": {"p90": 1, "goodput": 0}}  # a tie wins for nobody
    assert table["pooled"]["ours"]["requests"] == 30
    assert table["per_seed"][1]["ours"] == {"p90_ttft_ms": 30.0, "goodput": 5.0}
