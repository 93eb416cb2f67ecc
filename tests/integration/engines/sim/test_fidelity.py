"""The simulator's prefix cache against the real vLLM CPU engine: same requests, same hits.

Both run with block size 32 and the same number of KV blocks; one request
sequence with shared prefixes, exact repeats and enough distinct text to force
LRU evictions is replayed against each, one request at a time, and the
prefix-cache counters from their ``/metrics`` must agree within 5%.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from engines.sim import ClusterConfig, SimCluster
from tests.fixtures_engines import cached_tiny_model, vllm_cpu_env, vllm_installed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(not vllm_installed(), reason="vllm-cpu not installed"),
]

BLOCK_SIZE = 32
NUM_BLOCKS = 48  # 47 usable (block 0 is the null block): 1,504 tokens
MAX_MODEL_LEN = 1024
MODEL = "tiny"
WORDS = [
    "cache",
    "replica",
    "router",
    "prefix",
    "token",
    "block",
    "engine",
    "request",
    "stream",
    "batch",
    "model",
    "serving",
    "gateway",
    "latency",
    "queue",
    "policy",
    "weight",
    "decode",
    "prefill",
    "memory",
    "adapter",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def text(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def request_sequence(seed: int = 7) -> list[str]:
    """Four long shared prefixes, distinct questions, and exact repeats of earlier prompts."""
    rng = random.Random(seed)
    systems = [f"System {i}: " + text(rng, 220) for i in range(4)]
    prompts: list[str] = []
    for k in range(36):
        if k % 5 == 4:
            prompts.append(prompts[rng.randrange(len(prompts))])
        else:
            prompts.append(systems[rng.choice((0, 0, 1, 2, 3))] + " Q: " + text(rng, 30))
    return prompts


def prefix_counters(url: str) -> tuple[float, float]:
    body = httpx.get(f"{url}/metrics", timeout=10).text

    def value(name: str) -> float:
        found = re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", body, re.MULTILINE)
        return sum(float(v) for v in found)

    return value("vllm:prefix_cache_queries_total"), value("vllm:prefix_cache_hits_total")


def replay(url: str, prompts: list[str]) -> tuple[float, float]:
    with httpx.Client(timeout=120) as http:
        for prompt in prompts:
            response = http.post(f"{url}/v1/completions", json={
                "model": MODEL, "prompt": prompt, "max_tokens": 3, "ignore_eos": True,
                "temperature": 0.0})  # fmt: skip
            response.raise_for_status()
    last = (-1.0, -1.0)
    for _ in range(50):  # counters land with the engine's next stats update
        current = prefix_counters(url)
        if current == last:
            return current
        last = current
        time.sleep(0.2)
    return last


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return cached_tiny_model()


@pytest.fixture(scope="module")
def vllm_url(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("vllm") / "vllm.log").open("w")
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", MODEL,
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--block-size", str(BLOCK_SIZE),
        "--num-gpu-blocks-override", str(NUM_BLOCKS),
        "--max-model-len", str(MAX_MODEL_LEN), "--enable-prefix-caching",
    ]  # fmt: skip
    env = {**os.environ, **vllm_cpu_env(1)}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"vLLM exited with {process.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"vLLM did not start in 240 s; see {log.name}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def kv_blocks_reported_by(url: str) -> int | None:
    body = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(r'vllm:cache_config_info\{[^}]*num_gpu_blocks="(\d+)"', body)
    return int(match.group(1)) if match else None


async def test_prefix_cache_hits_match_vllm(vllm_url: str, model_dir: Path) -> None:
    prompts = request_sequence()
    reported = kv_blocks_reported_by(vllm_url)
    assert reported in (None, NUM_BLOCKS), f"vLLM runs with {reported} blocks, not {NUM_BLOCKS}"
    config = ClusterConfig(model_dir=str(model_dir), served_model_name=MODEL,
                           kv_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                           max_model_len=MAX_MODEL_LEN, time_scale=100.0)  # fmt: skip
    async with SimCluster(config) as cluster:
        sim_queries, sim_hits = await asyncio.to_thread(replay, cluster.urls[0], prompts)
    async with SimCluster(replace(config, kv_blocks=4096)) as roomy:
        _, unbounded_hits = await asyncio.to_thread(replay, roomy.urls[0], prompts)
    vllm_queries, vllm_hits = await asyncio.to_thread(replay, vllm_url, prompts)
    print(f"queries sim={sim_queries} vllm={vllm_queries}; hits sim={sim_hits} vllm={vllm_hits}")
    assert sim_queries == vllm_queries  # same tokenizer, same prompts
    assert 0 < sim_hits < unbounded_hits  # the sequence does exercise LRU eviction
    assert abs(sim_hits - vllm_hits) <= 0.05 * vllm_hits
