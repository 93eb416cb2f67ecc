"""The load generator against an in-process simulated cluster (2 replicas, tiny profile)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from engines.sim import ClusterConfig, SimCluster
from llmserve.bench.cli import bench_main
from llmserve.bench.loadgen import FixedCpuMeter, LoadConfig, build_result, run_load, write_result
from llmserve.bench.workloads import build_workload
from llmserve.bench.workloads.params import WorkloadParams

MODEL = "sim-tiny"
PARAMS = WorkloadParams(
    gsp_num_groups=2, gsp_prompts_per_group=4, gsp_system_prompt_len=64, gsp_question_len=8,
    gsp_output_len=8, mt_num_sessions=2, mt_turns=3, mt_system_prompt_len=32, mt_input_len=8,
    mt_output_len=4, mt_think_time_s=0.01)


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    config = ClusterConfig(served_model_name=MODEL, num_replicas=2, kv_blocks=512,
                           block_size=16, profile="tiny-cpu")
    async with SimCluster(config) as started:
        yield started


def load_config(cluster: SimCluster, **overrides: object) -> LoadConfig:
    base = LoadConfig(base_url=cluster.urls[0], model=MODEL, ignore_eos=True,
                      metrics_urls=tuple(cluster.urls), sample_interval_s=0.05)
    return replace(base, **overrides)  # type: ignore[arg-type]


async def test_shared_prefix_counts_tokens_and_cache_hits(cluster: SimCluster) -> None:
    workload = build_workload("shared-prefix", PARAMS)
    config = load_config(cluster, qps=200.0)
    run = await asyncio.to_thread(run_load, workload, config)
    result = build_result(workload, config, run, slo_ms={"ttft": 60_000.0})
    assert result["completed"] == 8
    assert result["failed"] == 0
    assert result["total_output_tokens"] == 8 * 8
    assert result["total_input_tokens"] > 8 * 64
    assert result["request_goodput"] == pytest.approx(result["request_throughput"])
    assert result["mean_ttft_ms"] > 0 and result["mean_tpot_ms"] > 0
    # every request went to replica 0: 3 of each group's 4 prompts reuse its system prompt
    assert 0.3 < result["prefix_cache_hit_rate"] < 1.0
    assert [r["requests"] for r in result["replicas"]] == [8.0, 0.0]
    assert result["load_imbalance_requests"] == pytest.approx(2.0)
    assert result["replica_load_samples"]
    assert 0.0 < result["client_cpu_util"] < 5.0


async def test_multi_turn_resends_the_growing_conversation(cluster: SimCluster) -> None:
    workload = build_workload("multi-turn", PARAMS)
    config = load_config(cluster, concurrency=2)
    run = await asyncio.to_thread(run_load, workload, config)
    assert len(run.records) == 6 and all(r.success for r in run.records)
    for session in ("session-0", "session-1"):
        turns = sorted((r for r in run.records if r.session_id == session),
                       key=lambda r: r.turn)
        assert [r.turn for r in turns] == [0, 1, 2]
        prompts = [r.prompt_tokens for r in turns]
        assert prompts[0] < prompts[1] < prompts[2]
        assert all(r.output_tokens == 4 for r in turns)
    result = build_result(workload, config, run)
    assert result["prefix_cache_hit_rate"] > 0.3  # later turns hit the earlier turns' blocks


async def test_saturated_client_is_not_published(cluster: SimCluster, tmp_path: Path) -> None:
    workload = build_workload("random", replace(PARAMS, num_requests=2, input_len=16,
                                                output_len=4))
    config = load_config(cluster)
    run = await asyncio.to_thread(run_load, workload, config, FixedCpuMeter(cpu_s=1e6))
    result = build_result(workload, config, run)
    assert result["completed"] == 2
    assert result["client_cpu_util"] > 0.9
    assert result["published"] is False
    assert "load generator" in result["unpublished_reason"]
    saved = json.loads(write_result(result, tmp_path, "refused").read_text())
    assert saved["published"] is False


async def test_cli_writes_json_and_plots(cluster: SimCluster, tmp_path: Path) -> None:
    argv = ["--base-url", cluster.urls[1], "--workload", "prefix-repetition",
            "--num-requests", "6", "--prefix-repetition-prefix-len", "32",
            "--prefix-repetition-suffix-len", "8", "--prefix-repetition-num-prefixes", "2",
            "--prefix-repetition-output-len", "4", "--qps", "100", "--ignore-eos",
            "--metrics-urls", *cluster.urls, "--result-dir", str(tmp_path), "--label", "cli",
            "--goodput", "ttft:60000", "--max-client-cpu-util", "100"]
    assert await asyncio.to_thread(bench_main, argv) == 0
    [path] = tmp_path.glob("cli-*.json")
    result = json.loads(path.read_text())
    assert result["completed"] == 6
    assert result["model_id"] == MODEL  # from /v1/models
    assert result["replicas"][1]["requests"] == 6.0
    pngs = sorted(p.name.split("-", 3)[-1] for p in tmp_path.glob("cli-*.png"))
    assert pngs == ["latency-cdf.png", "replica-load.png", "replica-timeline.png",
                    "throughput.png"]
