"""LoRA adapters through the gateway on a real vLLM CPU engine, checked against bare vLLM.

One engine at a time: a bare ``vllm serve --enable-lora --lora-modules ...`` first (the
reference outputs, and ``--worker-urls`` in front of it), stopped before the gateway
starts its own engine with ``lora_config`` (one adapter slot, adapters from a folder).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from engines.process import EngineProcess, free_port, kill_group
from engines.protocol import EngineSpec
from engines.vllm.engine import VllmEngine
from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from tests.fixtures_engines import TINY_VLLM_KWARGS, cached_tiny_model, vllm_cpu_env, vllm_installed

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not vllm_installed(), reason="vllm-cpu not installed")]

ADAPTERS = ("lora-0", "lora-1", "lora-2")
PROMPT = "The sea is"
CHAT = [{"role": "user", "content": "Tell me about the sea."}]


@dataclass
class Bare:
    url: str
    process: EngineProcess
    loop: asyncio.AbstractEventLoop  # the process's pipes belong to the loop that started it
    expected: dict[tuple[str, str], str] = field(default_factory=dict)

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.process.stop())
            self.loop.close()


def complete(client: OpenAI, model: str, *, stream: bool = False) -> str:
    kwargs: dict[str, Any] = {"model": model, "prompt": PROMPT, "max_tokens": 12,
                              "temperature": 0}
    if not stream:
        return client.completions.create(**kwargs).choices[0].text
    return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs)
                   if c.choices)


def chat(client: OpenAI, model: str, *, stream: bool = False) -> str:
    kwargs: dict[str, Any] = {"model": model, "messages": CHAT, "max_tokens": 12,
                              "temperature": 0}
    if not stream:
        return client.chat.completions.create(**kwargs).choices[0].message.content or ""
    return "".join(c.choices[0].delta.content or ""
                   for c in client.chat.completions.create(stream=True, **kwargs) if c.choices)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return cached_tiny_model(num_loras=3)


@pytest.fixture(scope="module")
def bare(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bare]:
    """vLLM alone, started the documented way: --enable-lora --lora-modules NAME=PATH."""
    spec = EngineSpec(model_source=str(model_dir), served_model_name="tiny", port=free_port(),
                      engine_kwargs={**TINY_VLLM_KWARGS, "max_loras": 3},
                      env=vllm_cpu_env(),
                      lora_modules={a: str(model_dir / "loras" / a) for a in ADAPTERS})
    log_path = tmp_path_factory.mktemp("bare-vllm") / "engine.log"
    loop = asyncio.new_event_loop()
    process = loop.run_until_complete(EngineProcess.launch(VllmEngine(), spec, log_path=log_path,
                                                           ready_timeout_s=300))
    found = Bare(spec.base_url, process, loop)
    client = OpenAI(base_url=spec.base_url + "/v1", api_key="unused", max_retries=0)
    for model in ("tiny", *ADAPTERS):
        found.expected[(model, "completion")] = complete(client, model)
        found.expected[(model, "chat")] = chat(client, model)
    yield found
    found.stop()


def test_adapters_change_the_output(bare: Bare) -> None:
    for kind in ("completion", "chat"):
        outputs = [bare.expected[(m, kind)] for m in ("tiny", *ADAPTERS)]
        assert len(set(outputs)) == len(outputs), outputs


def test_worker_urls_list_and_route_adapters(bare: Bare) -> None:
    serve.shutdown()
    serve.run(build_openai_app({"worker_urls": [bare.url]}), port=0)
    try:
        client = OpenAI(base_url=serve.http_url() + "/v1", api_key="unused", max_retries=0)
        cards = {m.id: m for m in client.models.list()}
        assert set(cards) == {"tiny", *ADAPTERS}
        assert all(cards[a].model_dump()["parent"] == "tiny" for a in ADAPTERS)
        for adapter in ADAPTERS:
            assert complete(client, adapter) == bare.expected[(adapter, "completion")]
        assert complete(client, "tiny") == bare.expected[("tiny", "completion")]
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def gateway(bare: Bare, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Any]]:
    bare.stop()  # one vLLM engine at a time
    folder = tmp_path_factory.mktemp("adapters")
    for adapter in ADAPTERS:
        shutil.copytree(model_dir / "loras" / adapter, folder / adapter)
    config = LLMConfig(model_loading_config={"model_id": "tiny", "model_source": str(model_dir)},
                       engine_kwargs={k: v for k, v in TINY_VLLM_KWARGS.items()
                                      if k != "max_lora_rank"},  # derived from the adapters
                       runtime_env={"env_vars": vllm_cpu_env()},
                       lora_config={"dynamic_lora_loading_path": f"file://{folder}",
                                    "max_num_adapters_per_replica": 1})
    serve.shutdown()
    serve.run(build_openai_app({"llm_configs": [config], "request_timeout_s": 120}), port=0)
    engine = serve.get_deployment_handle("LLMServer:tiny").endpoint.remote().result()
    yield {"url": serve.http_url(), "engine_url": engine.url, "engine_key": engine.api_key,
           "folder": folder,
           "expected": bare.expected}
    serve.shutdown()


@pytest.fixture(scope="module")
def client(gateway: dict[str, Any]) -> OpenAI:
    return OpenAI(base_url=gateway["url"] + "/v1", api_key="unused", max_retries=0)


def metric(gateway: dict[str, Any], name: str, adapter: str) -> float:
    text = httpx.get(gateway["url"] + "/metrics").text
    prefix = f'{name}{{model_name="{adapter}"}} '
    return sum(float(line.removeprefix(prefix)) for line in text.splitlines()
               if line.startswith(prefix))


def engine_adapters(gateway: dict[str, Any]) -> list[str]:
    data = httpx.get(gateway["engine_url"] + "/v1/models", headers={
        "authorization": f"Bearer {gateway['engine_key']}"}).json()["data"]
    return sorted(card["id"] for card in data if card.get("parent"))


def test_models_list_adapters_with_parent_and_root(client: OpenAI,
                                                   gateway: dict[str, Any]) -> None:
    cards = {m.id: m.model_dump() for m in client.models.list()}
    assert set(cards) == {"tiny", *(f"tiny:{a}" for a in ADAPTERS)}
    for adapter in ADAPTERS:
        card = cards[f"tiny:{adapter}"]
        assert card["parent"] == "tiny"
        assert card["root"] == str(gateway["folder"] / adapter)
    assert cards["tiny"]["parent"] is None
    assert client.models.retrieve("tiny:lora-1").model_dump()["parent"] == "tiny"


def test_adapter_output_equals_bare_vllm(client: OpenAI, gateway: dict[str, Any]) -> None:
    expected = gateway["expected"]
    for stream in (False, True):
        assert complete(client, "tiny:lora-1", stream=stream) == \
            expected[("lora-1", "completion")]
        assert chat(client, "tiny:lora-1", stream=stream) == expected[("lora-1", "chat")]
    assert complete(client, "tiny") == expected[("tiny", "completion")]
    assert expected[("lora-1", "completion")] != expected[("tiny", "completion")]


def test_one_slot_cycles_adapters_with_unloads(client: OpenAI,
                                               gateway: dict[str, Any]) -> None:
    expected = gateway["expected"]
    evictions_before = sum(metric(gateway, "llmserve_lora_adapter_evictions_total", f"tiny:{a}")
                           for a in ADAPTERS)
    for _ in range(2):
        for adapter in ADAPTERS:
            assert complete(client, f"tiny:{adapter}") == expected[(adapter, "completion")]
            assert engine_adapters(gateway) == [f"tiny:{adapter}"]  # the others unloaded
    evictions = sum(metric(gateway, "llmserve_lora_adapter_evictions_total", f"tiny:{a}")
                    for a in ADAPTERS)
    assert evictions - evictions_before >= 5


def wait_for_models(client: OpenAI, present: set[str], absent: set[str],
                    timeout_s: float = 30.0) -> set[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        ids = {m.id for m in client.models.list()}
        if present <= ids and not absent & ids:
            return ids
        if time.monotonic() > deadline:
            raise AssertionError(f"/v1/models is {sorted(ids)}; wanted {present} without "
                                 f"{absent}")
        time.sleep(0.5)


def test_new_folder_is_listed_without_restart_and_loads_once(
        client: OpenAI, gateway: dict[str, Any], model_dir: Path) -> None:
    shutil.copytree(model_dir / "loras" / "lora-2", gateway["folder"] / "fresh")
    wait_for_models(client, {"tiny:fresh"}, set())
    with ThreadPoolExecutor(6) as pool:
        outputs = list(pool.map(lambda _: complete(client, "tiny:fresh"), range(6)))
    assert set(outputs) == {gateway["expected"][("lora-2", "completion")]}
    assert metric(gateway, "llmserve_lora_adapter_loads_total", "tiny:fresh") == 1
    shutil.rmtree(gateway["folder"] / "fresh")
    wait_for_models(client, set(), {"tiny:fresh"})


def test_engine_restart_starts_with_no_adapters(client: OpenAI,
                                                gateway: dict[str, Any]) -> None:
    expected = gateway["expected"]
    assert complete(client, "tiny:lora-0") == expected[("lora-0", "completion")]
    handle = serve.get_deployment_handle("LLMServer:tiny")
    before = handle.endpoint.remote().result()
    loads = metric(gateway, "llmserve_lora_adapter_loads_total", "tiny:lora-0")
    assert before.pid is not None
    kill_group(before.pid, signal.SIGKILL)
    deadline = time.monotonic() + 300
    while True:
        info = handle.endpoint.remote().result()
        if info.pid != before.pid and info.ready:
            break
        assert time.monotonic() < deadline, "the engine did not come back"
        time.sleep(1.0)
    deadline = time.monotonic() + 60
    while True:  # the gateway notices the new engine within its refresh period
        try:
            text = complete(client, "tiny:lora-0")
            break
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(1.0)
    assert text == expected[("lora-0", "completion")]
    assert metric(gateway, "llmserve_lora_adapter_loads_total", "tiny:lora-0") == loads + 1
