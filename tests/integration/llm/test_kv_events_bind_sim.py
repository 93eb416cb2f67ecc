"""A launched engine publishes its KV-cache events on its own address only (loopback
here), not on every interface, and the gateway still subscribes to them."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import psutil
import pytest

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from llmserve.serve.handle import replica_ids
from tests.faults.harness import poll
from tests.fixtures_engines import cached_tiny_model


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    config = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "sim", "model_source": str(cached_tiny_model())},
        "llm_engine": "sim", "deployment_config": {"num_replicas": 2}})
    serve.shutdown()
    serve.run(build_openai_app({"llm_configs": [config]}), port=0)
    yield serve.http_url() or ""
    serve.shutdown()


def listening_ips(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def counter(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_event_sockets_listen_on_loopback_only(gateway: str) -> None:
    handle = serve.get_deployment_handle("LLMServer:sim")
    infos = [handle.options(replica_id=rid).endpoint.remote().result()
             for rid in replica_ids(handle)]
    assert len(infos) == 2
    for info in infos:
        assert info.kv_events is not None
        events, replay, _ = info.kv_events
        assert events.startswith("tcp://127.0.0.1:") and replay is not None
        for endpoint in (events, replay):
            assert listening_ips(int(endpoint.rsplit(":", 1)[1])) == {"127.0.0.1"}


def test_the_gateway_still_receives_the_events(gateway: str) -> None:
    poll(lambda: counter(httpx.get(f"{gateway}/metrics").text,
                         "llmserve_kv_events_live_replicas") == 2, 30, "both subscribed")
    for _ in range(2):
        response = httpx.post(f"{gateway}/v1/completions", timeout=30, json={
            "model": "sim", "prompt": "the same long prefix " * 20, "max_tokens": 2})
        assert response.status_code == 200, response.text
    poll(lambda: counter(httpx.get(f"{gateway}/metrics").text, "llmserve_kv_events_total")
         > 0, 30, "events arrived")
