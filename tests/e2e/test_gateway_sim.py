"""Gateway behaviour that needs no real engine: the simulator behind it (fast)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from benchmarks.cluster_procs import wait_http_ok
from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from llmserve.serve.exceptions import ConfigError
from tests.e2e.conftest import free_port
from tests.fixtures_engines import cached_tiny_model, sim_config

CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(cached_tiny_model())


@pytest.mark.usefixtures("fresh_serve")
def test_upstream_timeout_is_504(model_dir: str) -> None:
    slow = sim_config(model_dir, engine_kwargs={"time_scale": 0.02})
    serve.run(build_openai_app({"llm_configs": [slow], "request_timeout_s": 0.5}), port=0)
    url = serve.http_url()
    response = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                          json={"model": "sim", "messages": CHAT, "max_tokens": 50})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert response.headers["x-request-id"]


@pytest.mark.usefixtures("fresh_serve")
def test_two_replicas_share_load_and_api_keys_come_from_env(
        model_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSERVE_API_KEYS", "a,b")
    cfg = sim_config(model_dir, deployment_config={"num_replicas": 2},
                     routing_config={"policy": "round_robin"})
    serve.run(build_openai_app({"llm_configs": [cfg]}), port=0)
    url = serve.http_url()
    assert httpx.get(f"{url}/v1/models").status_code == 401
    client = OpenAI(base_url=f"{url}/v1", api_key="b", max_retries=0)
    for _ in range(8):
        client.chat.completions.create(model="sim", messages=CHAT, max_tokens=2)
    metrics = httpx.get(f"{url}/metrics").text
    assert ('llmserve_requests_total{model_name="sim",route="/v1/chat/completions",'
            'status="200"} 8.0') in metrics
    assert "llmserve_generation_tokens_total" in metrics
    servers = serve.status().applications["default"].deployments["LLMServer:sim"]
    assert servers.running_replicas == 2


async def _stream_many(url: str, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=60) as client:
        async def one() -> int:
            body = {"model": "sim", "messages": CHAT, "max_tokens": 60, "stream": True}
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                chunks = [line async for line in r.aiter_lines() if line.startswith("data:")]
                assert chunks[-1] == "data: [DONE]"
                return r.status_code
        return list(await asyncio.gather(*(one() for _ in range(n))))


@pytest.mark.usefixtures("fresh_serve")
def test_autoscaling_follows_gateway_load(model_dir: str) -> None:
    cfg = sim_config(model_dir, engine_kwargs={"time_scale": 0.2}, deployment_config={
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 2,
                               "target_ongoing_requests": 2, "upscale_delay_s": 0,
                               "downscale_delay_s": 1, "look_back_period_s": 0.5}})
    serve.run(build_openai_app({"llm_configs": [cfg]}), port=0)
    url = serve.http_url()
    peak = 0

    async def watch(task: asyncio.Future[list[int]]) -> None:
        nonlocal peak
        while not task.done():
            status = await asyncio.to_thread(serve.status)
            peak = max(peak, status.applications["default"].deployments["LLMServer:sim"]
                       .target_replicas)
            await asyncio.sleep(0.1)

    async def main() -> list[int]:
        load = asyncio.ensure_future(_stream_many(url, 16))
        await watch(load)
        return await load

    assert asyncio.run(main()) == [200] * 16
    assert peak == 2


def test_worker_urls_mode_fronts_running_engines(model_dir: str) -> None:
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "engines.sim", "--model", model_dir,
                            "--port", str(port), "--replicas", "2",
                            "--served-model-name", "ext"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gateway_port = free_port()
    gateway = None
    try:
        for p in (port, port + 1):
            wait_http_ok(f"http://127.0.0.1:{p}/health", 60, sim)
        gateway = subprocess.Popen(
            [sys.executable, "-m", "llmserve.cli", "serve", "--port", str(gateway_port),
             "--worker-urls", f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}/v1",
             "--routing", "round_robin"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_http_ok(f"http://127.0.0.1:{gateway_port}/health", 60, gateway)
        client = OpenAI(base_url=f"http://127.0.0.1:{gateway_port}/v1", api_key="x")
        assert [m.id for m in client.models.list()] == ["ext"]
        for _ in range(4):
            client.completions.create(model="ext", prompt="hi", max_tokens=3)
        served = [_running_total(f"http://127.0.0.1:{p}/metrics") for p in (port, port + 1)]
        assert served == [2.0, 2.0]
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(30)
        sim.terminate()
        sim.wait(30)


def test_bad_app_arguments_are_config_errors(model_dir: str) -> None:
    with pytest.raises(ConfigError, match="unknown build_openai_app arguments"):
        build_openai_app({"llm_configs": [], "bogus": 1})
    with pytest.raises(ConfigError, match="needs at least one"):
        build_openai_app({"llm_configs": []})
    cfg = sim_config(model_dir)
    with pytest.raises(ConfigError, match="unique"):
        build_openai_app({"llm_configs": [cfg, cfg]})
    with pytest.raises(ValueError, match="engine_kwargs must not set"):
        sim_config(model_dir, engine_kwargs={"port": 1})


def test_llm_config_from_yaml_path(model_dir: str, tmp_path: Path) -> None:
    path = tmp_path / "model.yaml"
    path.write_text(json.dumps({"model_loading_config": {"model_id": "m",
                                                         "model_source": model_dir},
                                "llm_engine": "sim"}))
    assert LLMConfig.coerce(str(path)).model_id == "m"
    app = build_openai_app({"llm_configs": [str(path)]})
    names = [node.deployment.name for node in app.walk()]
    assert names == ["LLMServer:m", "OpenAiIngress"]


def _running_total(metrics_url: str) -> float:
    text = httpx.get(metrics_url).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


def test_placement_group_and_accelerator_reach_the_replica_options(model_dir: str) -> None:
    cfg = sim_config(model_dir, accelerator_type="H100",
                     placement_group_config={"bundles": [{"GPU": 2}], "strategy": "STRICT_PACK"})
    app = build_openai_app({"llm_configs": [cfg]})
    server = next(n for n in app.walk() if n.deployment.name == "LLMServer:sim")
    assert server.deployment.config.ray_actor_options == {
        "placement_group_bundles": [{"GPU": 2}], "placement_group_strategy": "STRICT_PACK",
        "accelerator_type": "H100"}


@pytest.mark.usefixtures("fresh_serve")
def test_requests_beyond_a_models_limit_get_429_with_retry_after(model_dir: str) -> None:
    slow = sim_config(model_dir, engine_kwargs={"time_scale": 0.02})
    serve.run(build_openai_app({"llm_configs": [slow], "max_ongoing_requests_per_model": 2}),
              port=0)
    url = serve.http_url()
    body = {"model": "sim", "messages": CHAT, "max_tokens": 500, "stream": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{url}/v1/chat/completions", json=body) as first, \
                client.stream("POST", f"{url}/v1/chat/completions", json=body) as second:
            # both are streaming: two slots taken (keep the line iterators: dropping one
            # closes its connection, which the gateway rightly takes as the client leaving)
            lines = [held.iter_lines() for held in (first, second)]
            assert (first.status_code, second.status_code) == (200, 200)
            assert all(next(it).startswith("data: ") for it in lines)
            refused = client.post(f"{url}/v1/chat/completions", json=body)
        # leaving both streams aborts them and frees their slots
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.headers["x-request-id"]
        deadline = time.monotonic() + 10
        while True:
            again = client.post(f"{url}/v1/chat/completions",
                                json={"model": "sim", "messages": CHAT, "max_tokens": 2})
            if again.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert again.status_code == 200


def test_bad_request_limit_is_a_config_error(model_dir: str) -> None:
    with pytest.raises(ConfigError, match="max_ongoing_requests_per_model"):
        build_openai_app({"llm_configs": [sim_config(model_dir)],
                          "max_ongoing_requests_per_model": 0})
