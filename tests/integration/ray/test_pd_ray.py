"""`build_pd_openai_app` on the Ray runtime: two pools of simulated engines, each scaled by
its own deployment_config."""

from __future__ import annotations

import time

import httpx
import pytest
from openai import OpenAI

from llmserve import serve
from llmserve.llm import build_pd_openai_app
from tests.e2e.test_pd_sim import metric
from tests.fixtures_engines import cached_tiny_model
from tests.integration.ray.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


def test_pd_app_on_ray_scales_each_pool_by_its_own_config(ray_serve: RayCluster) -> None:
    model_dir = str(cached_tiny_model())
    small = {"ray_actor_options": {"num_cpus": 0.1}}
    pool = {"model_loading_config": {"model_id": "sim", "model_source": model_dir},
            "llm_engine": "sim"}
    app = build_pd_openai_app({
        "prefill_config": {**pool, "deployment_config": {"num_replicas": 1, **small}},
        "decode_config": {**pool, "deployment_config": {"num_replicas": 2, **small}},
        "ingress_deployment_config": small})
    # only this process's proxy: on Ray the node's proxies share the port, each with its own
    # ingress and metrics, and a new connection may land on any of them
    serve.run(app, port=0, runtime="ray", proxy_location="Disabled")
    url = str(serve.http_url())
    http = httpx.Client(timeout=30)
    client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, http_client=http)
    for _ in range(3):
        out = client.completions.create(model="sim", prompt="hello " * 30, max_tokens=4)
        assert out.usage is not None and out.usage.completion_tokens == 4
    chunks = list(client.chat.completions.create(
        model="sim", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 5
    deployments = serve.status().applications["default"].deployments
    assert deployments["LLMServer:prefill:sim"].running_replicas == 1
    assert deployments["LLMServer:decode:sim"].running_replicas == 2
    deadline = time.monotonic() + 10  # the stream's bookkeeping ends just after its bytes
    ok = 0.0
    while time.monotonic() < deadline and ok < 4:
        text = http.get(f"{url}/metrics").text
        ok = metric(text, "llmserve_pd_requests_total", model_name="sim", outcome="ok")
        time.sleep(0.1)
    assert ok == 4, [line for line in text.splitlines() if "llmserve_pd_requests" in line]
