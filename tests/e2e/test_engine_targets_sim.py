"""`GET /metrics/engines` follows ``log_engine_metrics`` and the engines' restarts: a
model with it off is not listed, a model with it on lists every replica at its engine's
current address (a restarted engine's new port included)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from llmserve.llm.server import EngineEndpointInfo
from tests.eventually import eventually
from tests.fixtures_engines import cached_tiny_model


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    serve.shutdown()
    model = str(cached_tiny_model())
    listed = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "listed", "model_source": model},
        "llm_engine": "sim", "deployment_config": {"num_replicas": 2}})
    quiet = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "quiet", "model_source": model},
        "llm_engine": "sim", "log_engine_metrics": False})
    serve.run(build_openai_app({"llm_configs": [listed, quiet]}), port=0)
    url = serve.http_url()
    assert url is not None
    yield url
    serve.shutdown()


def endpoints(model: str) -> dict[str, EngineEndpointInfo]:
    """Each replica's engine, as the replica itself reports it."""
    found: dict[str, EngineEndpointInfo] = {}
    handle = serve.get_deployment_handle(f"LLMServer:{model}")
    for replica in serve.status().applications["default"].deployments[
            f"LLMServer:{model}"].replicas:
        rid = replica.replica_id
        found[rid] = handle.options(replica_id=rid).endpoint.remote().result(timeout_s=30)
    return found


def targets(gateway: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{gateway}/metrics/engines", timeout=10)
    assert response.status_code == 200
    groups: list[dict[str, Any]] = response.json()
    return groups


def listed_urls(groups: list[dict[str, Any]]) -> dict[str, str]:
    """replica -> the engine URL Prometheus would scrape (without the metrics path)."""
    urls = {}
    for group in groups:
        (target,) = group["targets"]
        labels = group["labels"]
        urls[labels["replica"]] = f"{labels['__scheme__']}://{target}"
    return urls


def test_only_models_with_engine_metrics_on_are_listed(gateway: str) -> None:
    # the gateway learns its replicas' engines in the background after start-up
    groups = eventually(lambda: len(targets(gateway)) >= 2 and targets(gateway), timeout_s=30)
    assert {g["labels"]["model_name"] for g in groups} == {"listed"}
    engines = endpoints("listed")
    assert listed_urls(groups) == {rid: info.url.rstrip("/") for rid, info in engines.items()}
    assert len(groups) == 2
    for group in groups:  # each target answers with the engine's own metrics
        (target,) = group["targets"]
        labels = group["labels"]
        text = httpx.get(f"{labels['__scheme__']}://{target}{labels['__metrics_path__']}",
                         timeout=10).text
        assert "vllm:num_requests_running" in text
    (quiet,) = endpoints("quiet").values()
    assert quiet.ready  # it runs; it is just not listed
    assert quiet.url.rstrip("/") not in listed_urls(groups).values()


def test_a_restarted_engine_is_listed_at_its_new_port(gateway: str) -> None:
    before = endpoints("listed")
    victim_id, victim = sorted(before.items())[0]
    assert victim.pid is not None
    os.killpg(victim.pid, signal.SIGKILL)

    def restarted() -> EngineEndpointInfo:
        info = endpoints("listed")[victim_id]
        assert info.restarts == victim.restarts + 1 and info.ready
        return info

    after = eventually(restarted, timeout_s=90, interval_s=0.2)
    assert after.url != victim.url  # the new engine process listens on another port

    def relisted() -> bool:
        urls = listed_urls(targets(gateway))
        assert urls[victim_id] == after.url.rstrip("/")
        assert len(urls) == 2
        return True

    eventually(relisted, timeout_s=30, interval_s=0.2)
    group = next(g for g in targets(gateway) if g["labels"]["replica"] == victim_id)
    labels = group["labels"]
    text = httpx.get(f"{after.url.rstrip('/')}{labels['__metrics_path__']}", timeout=10).text
    assert "vllm:num_requests_running" in text
