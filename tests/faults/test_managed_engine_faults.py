"""Faults of engines the gateway launches itself (`LLMServer` replicas, simulator)."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from llmserve import serve
from llmserve.llm import build_openai_app
from llmserve.llm.server import EngineEndpointInfo
from tests.faults.harness import poll
from tests.fixtures_engines import sim_config

CHAT = [{"role": "user", "content": "hello"}]


def engine_info() -> EngineEndpointInfo:
    info: EngineEndpointInfo = serve.get_deployment_handle("LLMServer:sim").endpoint.remote() \
        .result()
    return info


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.usefixtures("fresh_serve")
def test_hung_engine_is_replaced(model_dir: str) -> None:
    cfg = sim_config(model_dir, deployment_config={"health_check_period_s": 0.5})
    serve.run(build_openai_app({"llm_configs": [cfg]}), port=0)
    url = serve.http_url()
    hung = engine_info().pid
    assert hung is not None
    os.killpg(hung, signal.SIGSTOP)  # alive, silent
    try:
        poll(lambda: engine_info().pid != hung, 60, "the hung engine was replaced")
    finally:
        if not process_gone(hung):
            os.killpg(hung, signal.SIGCONT)
    poll(lambda: process_gone(hung), 20, "the hung engine's process is gone")

    def answers() -> bool:
        response = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                              json={"model": "sim", "messages": CHAT, "max_tokens": 2})
        return response.status_code == 200

    poll(answers, 60, "the new engine serves", every_s=0.5)
    assert httpx.get(f"{url}/health").status_code == 200


@pytest.mark.usefixtures("fresh_serve")
def test_slow_engine_is_a_504_and_its_request_is_aborted(model_dir: str) -> None:
    slow = sim_config(model_dir, engine_kwargs={"time_scale": 0.02})
    serve.run(build_openai_app({"llm_configs": [slow], "request_timeout_s": 0.5}), port=0)
    url = serve.http_url()
    response = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                          json={"model": "sim", "messages": CHAT, "max_tokens": 50})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    engine_url = engine_info().url

    def engine_idle() -> bool:
        text = httpx.get(f"{engine_url}/metrics").text
        return all(float(line.rsplit(" ", 1)[1]) == 0 for line in text.splitlines()
                   if line.startswith(("vllm:num_requests_running",
                                       "vllm:num_requests_waiting")))

    poll(engine_idle, 5, "the timed-out request no longer runs on the engine")
    metrics = httpx.get(f"{url}/metrics").text
    assert 'llmserve_requests_in_flight{model_name="sim"} 0.0' in metrics
