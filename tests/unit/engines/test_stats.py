from __future__ import annotations

from pathlib import Path

import pytest

from engines.protocol import EngineStats
from engines.sglang.engine import SglangEngine
from engines.vllm.engine import SimEngine, VllmEngine

FIXTURES = Path(__file__).with_name("fixtures")


def test_vllm_idle_metrics_after_a_repeated_prompt() -> None:
    stats = VllmEngine().parse_stats((FIXTURES / "vllm_metrics_idle.txt").read_text())
    assert stats == EngineStats(
        num_running=0,
        num_waiting=0,
        kv_cache_usage=0.0,
        prefix_cache_queries=1000,
        prefix_cache_hits=480,
    )
    assert stats.prefix_cache_hit_rate == pytest.approx(0.48)


def test_vllm_busy_metrics() -> None:
    stats = VllmEngine().parse_stats((FIXTURES / "vllm_metrics_busy.txt").read_text())
    assert (stats.num_running, stats.num_waiting) == (4, 8)
    assert 0.0 < stats.kv_cache_usage < 0.01
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (1020, 480)
    assert stats.running_lora_adapters == ("lora-0",)


def test_vllm_metrics_summed_over_data_parallel_engines() -> None:
    text = "\n".join(
        [
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{engine="0"} 2.0',
            'vllm:num_requests_running{engine="1"} 3.0',
            "# TYPE vllm:kv_cache_usage_perc gauge",
            'vllm:kv_cache_usage_perc{engine="0"} 0.2',
            'vllm:kv_cache_usage_perc{engine="1"} 0.4',
            "# TYPE vllm:prefix_cache_hits counter",
            'vllm:prefix_cache_hits_total{engine="0"} 10.0',
            'vllm:prefix_cache_hits_total{engine="1"} 5.0',
            "# TYPE vllm:lora_requests_info gauge",
            'vllm:lora_requests_info{running_lora_adapters="a,b",waiting_lora_adapters="c"} 20.0',
            'vllm:lora_requests_info{running_lora_adapters="",waiting_lora_adapters=""} 10.0',
            "",
        ]
    )
    stats = VllmEngine().parse_stats(text)
    assert stats.num_running == 5
    assert stats.kv_cache_usage == pytest.approx(0.3)
    assert stats.prefix_cache_hits == 15
    assert stats.running_lora_adapters == ("a", "b")
    assert stats.waiting_lora_adapters == ("c",)


def test_empty_metrics_give_zero_stats() -> None:
    assert VllmEngine().parse_stats("") == EngineStats()
    assert SimEngine().parse_stats("") == EngineStats()
    assert EngineStats().prefix_cache_hit_rate == 0.0


def test_sglang_metrics() -> None:
    stats = SglangEngine().parse_stats((FIXTURES / "sglang_metrics.txt").read_text())
    assert (stats.num_running, stats.num_waiting) == (5, 5)
    assert stats.kv_cache_usage == pytest.approx(0.5)
    assert stats.prefix_cache_hit_rate == pytest.approx(0.4)


def test_stats_as_mapping() -> None:
    stats = EngineStats(num_running=2, prefix_cache_queries=10, prefix_cache_hits=5)
    mapping = stats.as_mapping()
    assert mapping["num_running"] == 2.0
    assert mapping["prefix_cache_hit_rate"] == 0.5
