"""Engines llmserve launches demand a secret: straight to the engine a request without it
gets vLLM's 401, through the gateway it works, and the secret shows up nowhere an operator
or another local user can read (status, metrics, the gateway's log, ``ps``)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app, build_pd_openai_app
from llmserve.llm.server import EngineEndpointInfo
from llmserve.llm.tiny_model import cached_tiny_model
from tests.faults.harness import Gateway, SimEngine, poll

CHAT = [{"role": "user", "content": "hello"}]
UNAUTHORIZED = {"error": "Unauthorized"}  # vLLM's answer, body and all


def info_of(deployment: str = "LLMServer:sim") -> EngineEndpointInfo:
    info: EngineEndpointInfo = serve.get_deployment_handle(deployment).endpoint.remote() \
        .result()
    return info


def sim_config(model_dir: str, **changes: object) -> LLMConfig:
    base: dict[str, object] = {
        "model_loading_config": {"model_id": "sim", "model_source": model_dir},
        "llm_engine": "sim",
    }
    return LLMConfig.model_validate(base | changes)


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == UNAUTHORIZED


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    model_dir = cached_tiny_model(num_loras=1)
    folder = tmp_path_factory.mktemp("adapters")
    shutil.copytree(model_dir / "loras" / "lora-0", folder / "good")
    config = sim_config(str(model_dir),
                        lora_config={"dynamic_lora_loading_path": str(folder)})
    serve.shutdown()
    serve.run(build_openai_app({"llm_configs": [config]}), port=0)
    info = info_of()
    yield {"url": serve.http_url(), "info": info, "adapter": folder / "good"}
    serve.shutdown()


def test_straight_to_the_engine_without_the_secret_is_refused(gateway: dict[str, Any]) -> None:
    engine: EngineEndpointInfo = gateway["info"]
    assert engine.api_key and len(engine.api_key) >= 32
    body = {"model": "sim", "messages": CHAT, "max_tokens": 2}
    assert_refused(httpx.post(f"{engine.url}/v1/chat/completions", json=body, timeout=10))
    assert_refused(httpx.post(f"{engine.url}/v1/completions", timeout=10,
                              json={"model": "sim", "prompt": "hi", "max_tokens": 2}))
    assert_refused(httpx.post(f"{engine.url}/v1/chat/completions", json=body, timeout=10,
                              headers={"authorization": "Bearer not-the-secret"}))
    assert_refused(httpx.get(f"{engine.url}/v1/models", timeout=10))
    assert_refused(httpx.post(f"{engine.url}/v1/load_lora_adapter", timeout=10,
                              json={"lora_name": "x", "lora_path": str(gateway["adapter"])}))
    # with it, the engine answers; /health and /metrics stay open, as vLLM's
    allowed = httpx.post(f"{engine.url}/v1/chat/completions", json=body, timeout=10,
                         headers={"authorization": f"Bearer {engine.api_key}"})
    assert allowed.status_code == 200, allowed.text
    assert httpx.get(f"{engine.url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{engine.url}/metrics", timeout=10).status_code == 200


def test_through_the_gateway_every_call_works(gateway: dict[str, Any]) -> None:
    client = OpenAI(base_url=gateway["url"] + "/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(model="sim", messages=CHAT,  # type: ignore[arg-type]
                                          max_tokens=3)
    assert chat.choices[0].message.content
    whole = client.completions.create(model="sim", prompt="hi", max_tokens=3)
    assert whole.usage is not None and whole.usage.completion_tokens == 3
    pieces = list(client.completions.create(model="sim", prompt="hi", max_tokens=3,
                                            stream=True))
    assert "".join(p.choices[0].text for p in pieces if p.choices)
    streamed_chat = list(client.chat.completions.create(
        model="sim", messages=CHAT, max_tokens=3, stream=True))  # type: ignore[arg-type]
    assert streamed_chat
    # a LoRA adapter the gateway loads into the engine on demand (/v1/load_lora_adapter)
    adapted = client.completions.create(model="sim:good", prompt="hi", max_tokens=2)
    assert adapted.model == "sim:good"
    engine: EngineEndpointInfo = gateway["info"]
    listed = httpx.get(f"{engine.url}/v1/models", timeout=10,
                       headers={"authorization": f"Bearer {engine.api_key}"}).json()["data"]
    assert "sim:good" in {card["id"] for card in listed}


def test_the_secret_is_shown_nowhere(gateway: dict[str, Any],
                                     caplog: pytest.LogCaptureFixture) -> None:
    engine: EngineEndpointInfo = gateway["info"]
    secret = engine.api_key
    assert secret
    url = gateway["url"]
    with caplog.at_level(logging.DEBUG):
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        client.completions.create(model="sim", prompt="hi", max_tokens=2)
        pages = [httpx.get(f"{url}{path}", timeout=10).text
                 for path in ("/-/status", "/metrics", "/metrics/engines", "/health",
                              "/v1/models", "/-/routes")]
    assert pages[0] and "sim" in pages[1]
    for page in pages:
        assert secret not in page
    assert secret not in caplog.text
    assert secret not in repr(engine)
    processes = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True,
                               check=True).stdout
    assert "engines.sim" in processes  # the engine is listed, its secret is not
    assert secret not in processes


@pytest.mark.usefixtures("gateway")
def test_a_restarted_engine_keeps_the_secret_and_the_gateway_follows() -> None:
    before = info_of()
    assert before.pid is not None
    os.killpg(before.pid, signal.SIGKILL)
    poll(lambda: info_of().restarts == before.restarts + 1 and info_of().ready, 60,
         "the engine was restarted")
    after = info_of()
    assert after.api_key == before.api_key
    assert_refused(httpx.get(f"{after.url}/v1/models", timeout=10))
    url = serve.http_url()

    def answers() -> bool:
        response = httpx.post(f"{url}/v1/completions", timeout=30,
                              json={"model": "sim", "prompt": "hi", "max_tokens": 2})
        return response.status_code == 200

    poll(answers, 60, "the gateway serves from the restarted engine", every_s=0.2)


@pytest.fixture
def fresh_serve() -> Iterator[None]:
    serve.shutdown()
    yield
    serve.shutdown()


@pytest.mark.usefixtures("fresh_serve")
def test_a_secret_the_user_set_is_the_one_used() -> None:
    model_dir = str(cached_tiny_model())
    mine = sim_config(model_dir, runtime_env={"env_vars": {"VLLM_API_KEY": "sk-engine-mine"}})
    serve.run(build_openai_app({"llm_configs": [mine]}), port=0)
    engine = info_of()
    assert engine.api_key == "sk-engine-mine"
    assert httpx.get(f"{engine.url}/v1/models", timeout=10,
                     headers={"authorization": "Bearer sk-engine-mine"}).status_code == 200
    serve.shutdown()
    as_kwarg = sim_config(model_dir, engine_kwargs={"api_key": "sk-engine-kwarg"})
    serve.run(build_openai_app({"llm_configs": [as_kwarg]}), port=0)
    engine = info_of()
    assert engine.api_key == "sk-engine-kwarg"
    processes = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True,
                               check=True).stdout
    assert "sk-engine-kwarg" not in processes  # not passed as --api-key
    client = OpenAI(base_url=f"{serve.http_url()}/v1", api_key="unused", max_retries=0)
    assert client.completions.create(model="sim", prompt="hi", max_tokens=2).choices


@pytest.mark.usefixtures("fresh_serve")
def test_prefill_decode_sends_each_engine_its_secret() -> None:
    model_dir = str(cached_tiny_model())
    sim = {"model_loading_config": {"model_id": "sim", "model_source": model_dir},
           "llm_engine": "sim"}
    serve.run(build_pd_openai_app({"prefill_config": sim, "decode_config": sim}), port=0)
    prefill, decode = info_of("LLMServer:prefill:sim"), info_of("LLMServer:decode:sim")
    assert prefill.api_key and decode.api_key and prefill.api_key != decode.api_key
    for engine in (prefill, decode):
        assert_refused(httpx.post(f"{engine.url}/v1/completions", timeout=10,
                                  json={"model": "sim", "prompt": "hi", "max_tokens": 2}))
    client = OpenAI(base_url=f"{serve.http_url()}/v1", api_key="unused", max_retries=0)
    assert client.completions.create(model="sim", prompt="hi", max_tokens=2).choices
    streamed = list(client.chat.completions.create(
        model="sim", messages=CHAT, max_tokens=3, stream=True))  # type: ignore[arg-type]
    assert streamed


def test_worker_api_key_reaches_workers(tmp_path: Path) -> None:
    """``llmserve serve --worker-urls`` with the workers' key in LLMSERVE_WORKER_API_KEY;
    one worker up at start, one taken in later (its model list needs the key too)."""
    model_dir = str(cached_tiny_model())
    key_env = {"VLLM_API_KEY": "sk-workers"}
    os.environ.update(key_env)  # the simulator reads it as vLLM does
    try:
        first = SimEngine(model_dir).start()
        late = SimEngine(model_dir)
    finally:
        del os.environ["VLLM_API_KEY"]
    gateway = Gateway([first.url, late.url], tmp_path / "gateway.log",
                      args=["--model", model_dir],
                      env={"LLMSERVE_WORKER_API_KEY": "sk-workers"})
    try:
        gateway.start()
        assert_refused(httpx.get(f"{first.url}/v1/models", timeout=10))
        os.environ.update(key_env)
        try:
            late.start()
        finally:
            del os.environ["VLLM_API_KEY"]
        poll(lambda: "workers_not_ready" not in httpx.get(f"{gateway.url}/health").json(),
             30, "the late worker was taken in")
        for _ in range(4):  # both workers serve (round robin or prefix: both get some)
            response = httpx.post(f"{gateway.url}/v1/completions", timeout=30,
                                  json={"model": "sim", "prompt": "hi", "max_tokens": 2})
            assert response.status_code == 200, response.text
        assert "sk-workers" not in gateway.log()
    finally:
        gateway.stop()
        first.stop()
        late.stop()
