"""One real vLLM CPU server on the tiny model, launched through EngineProcess + VllmEngine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from openai import AsyncOpenAI, NotFoundError

from engines.process import EngineProcess, free_port, group_pids
from engines.protocol import EngineSpec, EngineStats, LoraAdapterError
from engines.vllm.engine import VllmEngine
from tests.fixtures_engines import TINY_VLLM_KWARGS, cached_tiny_model, vllm_cpu_env, vllm_installed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not vllm_installed(), reason="vllm is not installed"),
]

LONG_PROMPT = " ".join(f"Replica {i} serves the request and streams tokens." for i in range(30))


@dataclass
class Server:
    spec: EngineSpec
    engine: VllmEngine
    process: EngineProcess
    model_dir: Path
    client: httpx.AsyncClient
    openai: AsyncOpenAI

    async def stats(self) -> EngineStats:
        response = await self.client.get(self.engine.metrics_path)
        response.raise_for_status()
        return self.engine.parse_stats(response.text)

    async def greedy(self, model: str, prompt: str = "The gateway", max_tokens: int = 16) -> str:
        completion = await self.openai.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0
        )
        return completion.choices[0].text


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    model_dir = cached_tiny_model(num_loras=2)
    spec = EngineSpec(
        model_source=str(model_dir),
        served_model_name="tiny",
        port=free_port(),
        engine_kwargs=TINY_VLLM_KWARGS,
        env=vllm_cpu_env(),
        lora_modules={"lora-0": str(model_dir / "loras" / "lora-0")},
    )
    engine = VllmEngine()
    log_path = tmp_path_factory.mktemp("vllm") / "engine.log"
    started = time.monotonic()
    process = await EngineProcess.launch(engine, spec, log_path=log_path, ready_timeout_s=300)
    print(f"vLLM CPU cold start: {time.monotonic() - started:.1f}s (log: {log_path})")
    async with httpx.AsyncClient(base_url=spec.base_url, timeout=120) as client:
        openai = AsyncOpenAI(base_url=f"{spec.base_url}/v1", api_key="unused", max_retries=0)
        yield Server(spec, engine, process, model_dir, client, openai)
        await openai.close()
    await process.stop()


async def test_chat_and_completions(server: Server) -> None:
    chat = await server.openai.chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=8,
        temperature=0,
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and chat.usage.completion_tokens == 8
    assert chat.usage.prompt_tokens > 5  # the chat template wrapped the messages

    completion = await server.openai.completions.create(model="tiny", prompt="Hello", max_tokens=5)
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert await server.greedy("tiny") == await server.greedy("tiny")
    models = await server.openai.models.list()
    assert {model.id for model in models.data} == {"tiny", "lora-0"}


async def test_stats_count_prefix_cache_hits(server: Server) -> None:
    before = await server.stats()
    for _ in range(2):
        await server.greedy("tiny", prompt=LONG_PROMPT, max_tokens=2)
    after = await server.stats()
    assert after.prefix_cache_queries > before.prefix_cache_queries
    assert after.prefix_cache_hits >= before.prefix_cache_hits + 32  # at least one block


async def test_stats_see_running_and_waiting_requests(server: Server) -> None:
    """Keep 8 long requests in flight until /metrics shows them (up to 30 s), then until it
    shows the engine idle: vLLM CPU publishes its gauges with a lag that varies with load."""
    body = {"model": "tiny", "prompt": "Count:", "max_tokens": 900, "ignore_eos": True}
    loop = asyncio.get_running_loop()

    def send() -> asyncio.Task[Any]:
        return asyncio.create_task(server.client.post("/v1/completions", json=body))

    in_flight = [send() for _ in range(8)]
    finished: list[Any] = []
    busiest = EngineStats()
    deadline = loop.time() + 30
    while busiest.num_running + busiest.num_waiting < 2 and loop.time() < deadline:
        stats = await server.stats()
        if stats.num_running + stats.num_waiting > busiest.num_running + busiest.num_waiting:
            busiest = stats
        for task in [t for t in in_flight if t.done()]:
            in_flight.remove(task)
            finished.append(task.result())
            in_flight.append(send())
        await asyncio.sleep(0.05)
    finished += await asyncio.gather(*in_flight)
    assert busiest.num_running + busiest.num_waiting >= 2
    assert busiest.kv_cache_usage > 0.0
    assert all(response.status_code == 200 for response in finished)
    deadline = loop.time() + 30
    idle = await server.stats()
    while (idle.num_running, idle.num_waiting) != (0, 0) and loop.time() < deadline:
        await asyncio.sleep(0.2)
        idle = await server.stats()
    assert (idle.num_running, idle.num_waiting) == (0, 0)


async def test_lora_load_and_unload_change_output(server: Server) -> None:
    base_text = await server.greedy("tiny")
    assert await server.greedy("lora-0") != base_text  # loaded at start-up

    lora_1 = str(server.model_dir / "loras" / "lora-1")
    await server.engine.load_lora(server.client, server.spec.base_url, "lora-1", lora_1)
    assert "lora-1" in await server.engine.list_lora_adapters(server.client, server.spec.base_url)
    lora_text = await server.greedy("lora-1")
    assert lora_text not in (base_text, await server.greedy("lora-0"))

    await server.engine.unload_lora(server.client, server.spec.base_url, "lora-1")
    assert await server.engine.list_lora_adapters(server.client, server.spec.base_url) == ["lora-0"]
    with pytest.raises(NotFoundError):
        await server.greedy("lora-1")
    assert await server.greedy("tiny") == base_text


async def test_lora_errors_are_typed(server: Server) -> None:
    with pytest.raises(LoraAdapterError) as error:
        await server.engine.load_lora(
            server.client, server.spec.base_url, "missing", "/nonexistent/adapter"
        )
    assert error.value.status_code is not None and error.value.status_code >= 400
    with pytest.raises(LoraAdapterError):
        await server.engine.unload_lora(server.client, server.spec.base_url, "never-loaded")


async def test_stop_leaves_no_processes(server: Server) -> None:
    """Runs last: stops the shared server and checks that its whole process tree is gone."""
    pgid = server.process.pid
    assert pgid is not None and len(group_pids(pgid)) >= 3  # guard, API server, EngineCore
    code = await server.process.stop(timeout_s=30)
    assert code is not None and not server.process.is_alive
    assert group_pids(pgid) == []
    with pytest.raises(httpx.ConnectError):
        await server.client.get("/health")
