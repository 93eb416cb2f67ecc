"""``--worker-urls`` workers that come up after the gateway: their KV-event subscriptions
start when they do, so the gateway routes them from what they report holding."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from benchmarks.cluster_procs import sim_cluster
from llmserve import serve
from llmserve.llm import build_openai_app
from llmserve.openai.kv_events import HUB
from tests.e2e.conftest import free_port_run
from tests.fixtures_engines import cached_tiny_model

REPLICAS = 2


def live_replicas(gateway: str) -> float:
    text = httpx.get(f"{gateway}/metrics").text
    return sum(float(v) for v in re.findall(
        r"^llmserve_kv_events_live_replicas(?:\{[^}]*\})? (\S+)$", text, re.M))


@pytest.fixture(scope="module")
def late(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    model_dir = str(cached_tiny_model())
    logs = tmp_path_factory.mktemp("kv-events-late")
    base = free_port_run(3 * REPLICAS)  # engines, event sockets, replay sockets
    urls = [f"http://127.0.0.1:{base + k}" for k in range(REPLICAS)]
    events_at, replay_at = base + REPLICAS, base + 2 * REPLICAS
    kv = [f"tcp://127.0.0.1:{events_at + k},tcp://127.0.0.1:{replay_at + k}"
          for k in range(REPLICAS)]
    serve.shutdown()
    serve.run(build_openai_app({
        "worker_urls": urls, "worker_engine": "sim", "worker_kv_events": kv,
        "worker_startup_timeout_s": 120,
        "routing_config": {"policy": "prefix_aware", "tokenizer_source": model_dir}}),
        port=0)
    gateway = serve.http_url()
    try:
        health = httpx.get(f"{gateway}/health")
        assert health.status_code == 503 and health.json()["status"] == "starting"
        assert live_replicas(gateway) == 0  # nothing to subscribe to yet
        config = {"enable_kv_cache_events": True, "publisher": "zmq",
                  "endpoint": f"tcp://*:{events_at}", "replay_endpoint": f"tcp://*:{replay_at}"}
        with sim_cluster(model_dir, REPLICAS, base, "llama-3.1-8b-h100", 1.0,
                         logs / "sim.log", ["--kv-events-config", json.dumps(config)]):
            try:
                yield {"gateway": gateway, "urls": urls,
                       "model": httpx.get(f"{urls[0]}/v1/models").json()["data"][0]["id"]}
            finally:  # before the engines go: their subscriptions end, not break
                serve.shutdown()
    finally:
        serve.shutdown()


def test_late_workers_are_subscribed_when_they_come_up(late: dict[str, Any]) -> None:
    gateway = late["gateway"]
    deadline = time.monotonic() + 60
    while live_replicas(gateway) < REPLICAS:
        assert time.monotonic() < deadline, httpx.get(f"{gateway}/health").text
        time.sleep(0.1)
    assert httpx.get(f"{gateway}/health").json()["status"] == "ok"


def test_late_workers_are_routed_from_their_events(late: dict[str, Any]) -> None:
    gateway, urls, model = late["gateway"], late["urls"], late["model"]
    view = next(v for (m, _), v in HUB.views.items() if m == model)
    system = " ".join(f"rule {i} holds for everyone here." for i in range(60))
    response = httpx.post(f"{gateway}/v1/chat/completions", timeout=30, json={
        "model": model, "max_tokens": 2,
        "messages": [{"role": "system", "content": system},
                     {"role": "user", "content": "first?"}]})
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 10
    while not any(view.held_blocks(u) for u in urls):  # the engine's BlockStored arrived
        assert time.monotonic() < deadline, "no KV events from the late workers"
        time.sleep(0.02)
    [holder] = [u for u in urls if view.held_blocks(u)]
    assert view.is_live(holder)



def test_shutdown_ends_the_late_workers_subscriptions(late: dict[str, Any]) -> None:
    model = late["model"]
    subscribers = [s for (m, _), s in HUB._subscribers.items() if m == model]
    assert len(subscribers) == REPLICAS
    serve.shutdown()  # the gateway goes; the engines stay up
    assert not [key for key in HUB._subscribers if key[0] == model]
    assert not any(s.view.is_live(s.source.replica_id) for s in subscribers)
