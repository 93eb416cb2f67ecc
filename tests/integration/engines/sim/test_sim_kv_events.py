"""The simulator's KV-cache events: what a subscriber builds from them is exactly what each
replica's cache holds, through evictions, and every replica publishes on its own port."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import openai
import pytest

from engines.sim import ClusterConfig, SimCluster
from llmserve.openai.kv_events import EventSource, KVEventSubscriber
from routing.block_hash import block_hashes
from routing.kv_cache_view import ClusterCacheView
from tests.e2e.conftest import free_port_run

MODEL = "sim-tiny"
BS = 16
KV_BLOCKS = 24  # 23 usable blocks of 16 tokens per replica: a handful of prompts fill it


@pytest.fixture
async def rig(sim_tokenizer_dir: Path) -> AsyncIterator[tuple[SimCluster, ClusterCacheView,
                                                            Counter[tuple[str, str]]]]:
    port = free_port_run(4)
    replay = port + 2
    events = {"enable_kv_cache_events": True, "publisher": "zmq",
              "endpoint": f"tcp://*:{port}", "replay_endpoint": f"tcp://*:{replay}"}
    config = ClusterConfig(model_dir=str(sim_tokenizer_dir), served_model_name=MODEL,
                           num_replicas=2, kv_blocks=KV_BLOCKS, block_size=BS,
                           kv_events_config=json.dumps(events))
    view = ClusterCacheView(BS)
    counters: Counter[tuple[str, str]] = Counter()
    async with SimCluster(config) as cluster:
        subscribers = [KVEventSubscriber(EventSource(f"r{k}", f"tcp://127.0.0.1:{port + k}",
                                                     f"tcp://127.0.0.1:{replay + k}"),
                                         MODEL, view, counters) for k in range(2)]
        for s in subscribers:
            s.start()
        await until(lambda: view.is_live("r0") and view.is_live("r1"))
        try:
            yield cluster, view, counters
        finally:
            for s in subscribers:
                await s.close()


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def cached_on(cluster: SimCluster, k: int) -> frozenset[object]:
    """The replica's cached blocks, named as its events name them (vLLM's default: the
    hash's low 64 bits as an int)."""
    return frozenset(int.from_bytes(h, "big") & ((1 << 64) - 1)
                     for h in cluster.replicas[k].engine.kv_cache._cached)


async def test_the_view_is_what_each_replica_caches_through_evictions(rig: tuple[
        SimCluster, ClusterCacheView, Counter[tuple[str, str]]]) -> None:
    cluster, view, counters = rig
    api = [openai.AsyncOpenAI(base_url=f"{u}/v1", api_key="x", max_retries=0)
           for u in cluster.urls]
    first = list(range(10, 10 + 5 * BS + 3))  # 5 full blocks
    await api[0].completions.create(model=MODEL, prompt=first, max_tokens=1)
    await until(lambda: view.held_engine_hashes("r0") == cached_on(cluster, 0))
    assert view.match(MODEL, block_hashes(first, BS)) == {"r0": 5}
    assert view.held_blocks("r1") == 0
    # many different prompts on both replicas: far more blocks than either cache holds
    for i in range(12):
        prompt = list(range(1000 + 100 * i, 1000 + 100 * i + 4 * BS))
        await api[i % 2].completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    for k in (0, 1):
        await until(lambda k=k: view.held_engine_hashes(f"r{k}") == cached_on(cluster, k))
        assert 0 < view.held_blocks(f"r{k}") < KV_BLOCKS
    assert view.counters.removed > 0
    assert view.match(MODEL, block_hashes(first, BS)) == {}  # evicted, and the view knows
    assert counters[(MODEL, "gap_lost")] == 0


async def test_adapters_are_reported_under_their_own_key(rig: tuple[
        SimCluster, ClusterCacheView, Counter[tuple[str, str]]]) -> None:
    cluster, view, _ = rig
    url = cluster.urls[1]
    import httpx

    async with httpx.AsyncClient() as http:
        response = await http.post(f"{url}/v1/load_lora_adapter",
                                   json={"lora_name": "sql", "lora_path": "/adapters/sql"})
        assert response.status_code == 200, response.text
    api = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    prompt = list(range(300, 300 + 3 * BS))
    await api.completions.create(model="sql", prompt=prompt, max_tokens=1)
    await until(lambda: view.held_blocks("r1") == 3)
    assert view.match(f"{MODEL}\x00sql", block_hashes(prompt, BS)) == {"r1": 3}
    assert view.match(MODEL, block_hashes(prompt, BS)) == {}
