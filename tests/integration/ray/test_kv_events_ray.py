"""KV events on Ray: with ``proxy_location: EveryNode`` every node's proxy runs its own
OpenAI ingress, and each subscribes to every engine's KV-cache events, so a prompt one
node's ingress placed is found by another node's, which never saw it."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from tests.fixtures_engines import cached_tiny_model
from tests.integration.ray.conftest import RayCluster
from tests.integration.ray.http_load import wait_node_proxy_serving

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
ENGINES = 2


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for found_labels, value in re.findall(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M):
        if all(f'{k}="{v}"' in found_labels for k, v in labels.items()):
            total += float(value)
    return total


def gateway_metric(url: str, name: str, **labels: str) -> float:
    return metric(httpx.get(f"{url}/metrics", timeout=10).text, name, **labels)


def engine_counts(engines: list[str]) -> list[tuple[float, float]]:
    texts = [httpx.get(f"{e}/metrics", timeout=10).text for e in engines]
    return [(metric(t, "vllm:request_success_total"), metric(t, "vllm:prefix_cache_hits_total"))
            for t in texts]


def ask(gateway: str, system: str, engines: list[str]) -> tuple[int, float]:
    """Which engine served it, and its prefix-cache hit tokens there."""
    before = engine_counts(engines)
    response = httpx.post(f"{gateway}/v1/chat/completions", timeout=60, json={
        "model": "sim", "max_tokens": 2,
        "messages": [{"role": "system", "content": system},
                     {"role": "user", "content": "what now?"}]})
    assert response.status_code == 200, response.text
    after = engine_counts(engines)
    [index] = [i for i in range(len(engines)) if after[i][0] > before[i][0]]
    return index, after[index][1] - before[index][1]


def until(check: object, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_every_node_ingress_routes_from_every_engines_events(ray_serve: RayCluster) -> None:
    cfg = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "sim", "model_source": str(cached_tiny_model())},
        "llm_engine": "sim",
        "deployment_config": {"num_replicas": ENGINES, "ray_actor_options": {"num_cpus": 0.1}},
        "routing_config": {"policy": "prefix_aware"}})
    serve.run(build_openai_app({"llm_configs": [cfg]}), port=0, runtime="ray")
    a, b = (wait_node_proxy_serving(node, "/v1/models") for node in ray_serve.worker_node_ids)
    for url in (a, b):  # each node's ingress subscribed to both engines
        until(lambda url=url: gateway_metric(url, "llmserve_kv_events_live_replicas") == ENGINES,
              f"{url}: not subscribed to every engine")
    targets = httpx.get(f"{a}/metrics/engines", timeout=10).json()
    engines = sorted(f"http://{t['targets'][0]}" for t in targets)
    assert len(engines) == ENGINES

    for group in range(3):
        system = " ".join(f"node test group {group} rule {i} holds." for i in range(60))
        batches = gateway_metric(b, "llmserve_kv_events_total", event="batches")
        holder, _ = ask(a, system, engines)
        # the holder's BlockStored reached b's ingress (only the holder stored anything)
        until(lambda batches=batches: gateway_metric(
            b, "llmserve_kv_events_total", event="batches") > batches,
            "b's ingress got no KV events")
        hits = gateway_metric(b, "llmserve_routing_decisions_total", outcome="hit")
        chosen, cached = ask(b, system, engines)
        assert chosen == holder, f"group {group}: b chose engine {chosen}, a placed {holder}"
        assert cached >= 16 * 10  # served from the cache a's request filled
        assert gateway_metric(b, "llmserve_routing_decisions_total", outcome="hit") == hits + 1
