"""Two independent gateways in front of the same simulated replicas, both fed by the
replicas' KV-cache events: a prefix one gateway placed is found by the other.

Gateway A runs in this process (``build_openai_app`` with ``worker_kv_events``), gateway B
is a separate ``llmserve serve --worker-urls ... --worker-kv-events ...`` process; B never
sees the first request of a prefix, only the engines' events about it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from benchmarks.cluster_procs import ROOT, sim_cluster, stop, wait_http_ok
from llmserve import serve
from llmserve.llm import build_openai_app
from llmserve.openai.kv_events import HUB
from tests.e2e.conftest import free_port, free_port_run
from tests.fixtures_engines import cached_tiny_model

REPLICAS = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    model_dir = str(cached_tiny_model())
    logs = tmp_path_factory.mktemp("kv-events")
    base = free_port_run(2 * REPLICAS)
    events = {"enable_kv_cache_events": True, "publisher": "zmq",
              "endpoint": f"tcp://*:{base}", "replay_endpoint": f"tcp://*:{base + REPLICAS}"}
    extra = ["--kv-events-config", json.dumps(events)]
    with sim_cluster(model_dir, REPLICAS, free_port(), "llama-3.1-8b-h100", 1.0,
                     logs / "sim.log", extra) as urls:
        kv = [f"tcp://127.0.0.1:{base + k},tcp://127.0.0.1:{base + REPLICAS + k}"
              for k in range(REPLICAS)]
        serve.shutdown()
        serve.run(build_openai_app({
            "worker_urls": urls, "worker_engine": "sim", "worker_kv_events": kv,
            "routing_config": {"policy": "prefix_aware", "tokenizer_source": model_dir}}),
            port=0)
        port_b = free_port()
        log_b = (logs / "gateway-b.log").open("wb")
        gateway_b = subprocess.Popen(
            [sys.executable, "-m", "llmserve.cli", "serve", "--engine", "sim", "--model",
             model_dir, "--port", str(port_b), "--worker-urls", *urls,
             "--worker-kv-events", *kv], cwd=ROOT, stdout=log_b, stderr=subprocess.STDOUT)
        try:
            wait_http_ok(f"http://127.0.0.1:{port_b}/health", 60, gateway_b)
            model = httpx.get(f"{urls[0]}/v1/models").json()["data"][0]["id"]
            yield {"a": serve.http_url(), "b": f"http://127.0.0.1:{port_b}", "urls": urls,
                   "model": model, "log_b": logs / "gateway-b.log"}
        finally:
            stop(gateway_b)
            log_b.close()
            serve.shutdown()


def counter(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def served(urls: list[str]) -> list[tuple[float, float]]:
    texts = [httpx.get(f"{u}/metrics").text for u in urls]
    return [(counter(t, "vllm:request_success_total"),
             counter(t, "vllm:prefix_cache_hits_total")) for t in texts]


def ask(gateway: str, model: str, system: str, question: str, urls: list[str]) -> tuple[int,
                                                                                        float]:
    """Which replica served it, and the prefix-cache hit tokens it had there."""
    before = served(urls)
    response = httpx.post(f"{gateway}/v1/chat/completions", timeout=30, json={
        "model": model, "max_tokens": 2,
        "messages": [{"role": "system", "content": system},
                     {"role": "user", "content": question}]})
    assert response.status_code == 200, response.text
    after = served(urls)
    [index] = [i for i in range(len(urls)) if after[i][0] > before[i][0]]
    return index, after[index][1] - before[index][1]


def test_a_prefix_placed_through_one_gateway_is_found_by_the_other(
        setup: dict[str, Any]) -> None:
    urls, model = setup["urls"], setup["model"]
    view = next(v for (m, _), v in HUB.views.items() if m == model)
    for group in range(4):
        system = " ".join(f"group {group} rule {i} holds." for i in range(60))
        holder, _ = ask(setup["a"], model, system, "first question?", urls)
        deadline = time.monotonic() + 10
        while view.held_blocks(urls[holder]) == 0:  # the engine's report reached A...
            assert time.monotonic() < deadline, "no KV events from the engine"
            time.sleep(0.02)
        time.sleep(0.2)  # ...and B, subscribed to the same engines
        chosen, hits = ask(setup["b"], model, system, "another question?", urls)
        assert chosen == holder, f"group {group}: B chose replica {chosen}, A placed {holder}"
        assert hits >= 16 * 10  # the shared system prompt came from the cache
    metrics_b = httpx.get(f"{setup['b']}/metrics").text
    assert counter(metrics_b, "llmserve_kv_events_live_replicas") == REPLICAS


def test_gateway_metrics_count_the_subscriptions(setup: dict[str, Any]) -> None:
    # gateway B runs in a process of its own: A's KV-event counters are process-wide and
    # carry what earlier tests in this process counted for the same model
    text = httpx.get(f"{setup['b']}/metrics").text
    assert counter(text, "llmserve_kv_events_live_replicas") == REPLICAS
    batches = re.findall(r'^llmserve_kv_events_total\{[^}]*event="batches"[^}]*\} (\S+)$',
                         text, re.M)
    assert batches and float(batches[0]) > 0
    assert counter(text, "llmserve_kv_events_degraded_total") == 0  # nothing went wrong


def test_worker_kv_events_must_match_the_worker_urls() -> None:
    from llmserve.serve.exceptions import ConfigError

    with pytest.raises(ConfigError, match="one entry per worker URL"):
        build_openai_app({"worker_urls": ["http://a", "http://b"],
                          "worker_kv_events": ["tcp://a:1"]})
    with pytest.raises(ConfigError, match="expected"):
        build_openai_app({"worker_urls": ["http://a"], "worker_kv_events": ["http://a:1"]})


def decisions(gateway: str, outcome: str) -> float:
    text = httpx.get(f"{gateway}/metrics").text
    return sum(float(v) for v in re.findall(
        rf'^llmserve_routing_decisions_total\{{[^}}]*outcome="{outcome}"[^}}]*\}} (\S+)$',
        text, re.M))


def ask_salted(gateway: str, model: str, system: str, salt: str | None,
               urls: list[str]) -> tuple[int, float]:
    before = served(urls)
    body: dict[str, Any] = {"model": model, "max_tokens": 2, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": "a question?"}]}
    if salt is not None:
        body["cache_salt"] = salt
    response = httpx.post(f"{gateway}/v1/chat/completions", timeout=30, json=body)
    assert response.status_code == 200, response.text
    after = served(urls)
    [index] = [i for i in range(len(urls)) if after[i][0] > before[i][0]]
    return index, after[index][1] - before[index][1]


def test_a_salted_prefix_is_found_only_with_the_same_salt(setup: dict[str, Any]) -> None:
    """The engine hashes ``cache_salt`` into the first block: B finds a prefix A placed
    with a salt only for the same salt, never for the unsalted or another salt."""
    urls, model, a, b = setup["urls"], setup["model"], setup["a"], setup["b"]
    view = next(v for (m, _), v in HUB.views.items() if m == model)
    system = " ".join(f"tenant rule {i} applies." for i in range(60))
    held = {u: view.held_blocks(u) for u in urls}
    holder, _ = ask_salted(a, model, system, "tenant-1", urls)
    deadline = time.monotonic() + 10
    while view.held_blocks(urls[holder]) <= held[urls[holder]]:
        assert time.monotonic() < deadline, "no KV events from the engine"
        time.sleep(0.02)
    time.sleep(0.2)  # B is subscribed to the same engines
    for salt in (None, "tenant-2"):
        hits_before = decisions(b, "hit")
        _, cached = ask_salted(b, model, system, salt, urls)
        assert cached == 0  # the engine agrees: nothing of it is cached for this salt
        assert decisions(b, "hit") == hits_before, f"salt {salt!r} routed as a prefix hit"
    hits_before = decisions(b, "hit")
    chosen, cached = ask_salted(b, model, system, "tenant-1", urls)
    assert chosen == holder and cached >= 16 * 10
    assert decisions(b, "hit") == hits_before + 1
