"""The simulator through a real uvicorn server, httpx and the official openai client."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import openai
import pytest

from engines.sim import ClusterConfig, SimCluster
from engines.sim.profiles import get_profile
from engines.sim.time_model import SeqChunk, kv_transfer_time_s, step_time_s
from engines.sim.tokenizer import HFTokenizer
from tests.eventually import eventually_async

MODEL = "sim-tiny"
NIXL_BOTH = '{"kv_connector": "NixlConnector", "kv_role": "kv_both"}'


@pytest.fixture
async def cluster(sim_tokenizer_dir: Path) -> AsyncIterator[SimCluster]:
    config = ClusterConfig(
        model_dir=str(sim_tokenizer_dir),
        served_model_name=MODEL,
        num_replicas=2,
        kv_blocks=512,
        block_size=16,
    )
    async with SimCluster(config) as started:
        yield started


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{[^}}]*model_name=\"{MODEL}\"[^}}]*\}} (\S+)$",
                      text, re.MULTILINE)  # fmt: skip
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def scrape(url: str) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/metrics")
        response.raise_for_status()
        return response.text


async def test_streaming_chat_with_usage_is_deterministic(cluster: SimCluster) -> None:
    api = client(cluster.urls[0])
    messages = [{"role": "user", "content": "Return the event loop for this thread."}]

    async def run() -> tuple[str, list[str | None], openai.types.CompletionUsage | None]:
        stream = await api.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=12,  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )  # fmt: skip
        text, reasons, usage = "", [], None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                reasons.append(choice.finish_reason)
        return text, reasons, usage

    text, reasons, usage = await run()
    assert text and reasons[-1] == "length"
    assert usage is not None and usage.completion_tokens == 12
    tokenizer = HFTokenizer(cluster.config.model_dir or "")
    prompt = tokenizer.encode(tokenizer.render_chat(messages), add_special_tokens=False)
    assert usage.prompt_tokens == len(prompt)
    assert (await run())[0] == text


async def test_n_choices_and_max_tokens(cluster: SimCluster) -> None:
    api = client(cluster.urls[0])
    response = await api.completions.create(
        model=MODEL, prompt="Create a new event loop", max_tokens=7, n=3,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in response.choices)
    assert len({c.text for c in response.choices}) > 1
    assert response.usage is not None and response.usage.completion_tokens == 21


async def test_seed_changes_the_text(cluster: SimCluster) -> None:
    api = client(cluster.urls[0])
    texts = [
        (await api.completions.create(model=MODEL, prompt="abc", max_tokens=8, seed=seed))
        .choices[0]
        .text
        for seed in (1, 1, 2)
    ]
    assert texts[0] == texts[1] != texts[2]


async def test_stop_string_truncates_and_finishes(cluster: SimCluster) -> None:
    api = client(cluster.urls[0])
    kwargs = {"model": MODEL, "prompt": "Return a list", "max_tokens": 30,
              "extra_body": {"ignore_eos": True}}  # fmt: skip
    full = (await api.completions.create(**kwargs)).choices[0].text  # type: ignore[call-overload]
    words = full.split()
    stop = words[len(words) // 2]
    cut = full.index(stop)
    stopped = await api.completions.create(stop=[stop], **kwargs)  # type: ignore[call-overload]
    choice = stopped.choices[0]
    assert choice.text == full[:cut]
    assert choice.finish_reason == "stop"
    assert stopped.usage is not None and stopped.usage.completion_tokens < 30


async def test_repeated_prompt_counts_prefix_cache_hits(cluster: SimCluster) -> None:
    url = cluster.urls[1]
    api = client(url)
    prompt_ids = list(range(5, 105))  # 100 tokens: 6 full blocks of 16 may hit
    for _ in range(2):
        await api.completions.create(model=MODEL, prompt=prompt_ids, max_tokens=1)
    text = await scrape(url)
    assert metric(text, "vllm:prefix_cache_queries_total") == 200
    assert metric(text, "vllm:prefix_cache_hits_total") == 96
    assert metric(text, "vllm:num_requests_running") == 0
    assert metric(text, "vllm:time_to_first_token_seconds_count") == 2
    assert "vllm:inter_token_latency_seconds_bucket" in text
    assert "vllm:kv_cache_usage_perc" in text
    other = await scrape(cluster.urls[0])
    assert metric(other, "vllm:prefix_cache_hits_total") == 0


async def test_client_disconnect_aborts_the_request(cluster: SimCluster) -> None:
    url = cluster.urls[0]
    body = {"model": MODEL, "prompt": "x", "max_tokens": 8000, "ignore_eos": True,
            "stream": True}  # fmt: skip
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
            async for _ in response.aiter_lines():
                break
            assert metric(await scrape(url), "vllm:num_requests_running") == 1
        await eventually_async(running_is(url, 0))
    text = await scrape(url)
    assert metric(text, "vllm:num_requests_running") == 0
    assert re.search(r'vllm:request_success_total\{[^}]*finished_reason="abort"[^}]*\} 1.0', text)


async def test_non_streaming_disconnect_aborts_the_request(cluster: SimCluster) -> None:
    url = cluster.urls[1]
    body = {"model": MODEL, "prompt": "x", "max_tokens": 8000, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=10) as http:
        task = asyncio.create_task(http.post(f"{url}/v1/completions", json=body))
        await eventually_async(running_is(url, 1))
        task.cancel()
        await eventually_async(running_is(url, 0))


def running_is(url: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return metric(await scrape(url), "vllm:num_requests_running") == count

    return check


async def test_lora_load_use_unload(cluster: SimCluster) -> None:
    url = cluster.urls[0]
    api = client(url)
    async with httpx.AsyncClient() as http:
        loaded = await http.post(f"{url}/v1/load_lora_adapter",
                                 json={"lora_name": "ad1", "lora_path": "/loras/ad1"})  # fmt: skip
        assert loaded.status_code == 200
        again = await http.post(f"{url}/v1/load_lora_adapter",
                                json={"lora_name": "ad1", "lora_path": "/loras/ad1"})  # fmt: skip
        assert again.status_code == 400
        models = [m.id for m in (await api.models.list()).data]
        assert models == [MODEL, "ad1"]
        response = await api.completions.create(model="ad1", prompt="hello", max_tokens=2)
        assert response.model == "ad1"
        unloaded = await http.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "ad1"})
        assert unloaded.status_code == 200
        missing = await http.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "ad1"})
        assert missing.status_code == 404
    with pytest.raises(openai.NotFoundError):
        await api.completions.create(model="ad1", prompt="hello", max_tokens=2)


async def test_errors_are_openai_shaped(cluster: SimCluster) -> None:
    url = cluster.urls[0]
    async with httpx.AsyncClient() as http:
        messages = [{"role": "user", "content": "hi"}]
        unknown = await http.post(f"{url}/v1/chat/completions",
                                  json={"model": "nope", "messages": messages})  # fmt: skip
        bad = await http.post(f"{url}/v1/completions",
                              json={"model": MODEL, "prompt": "hi", "max_tokens": 0})  # fmt: skip
        too_long = await http.post(f"{url}/v1/completions",
                                   json={"prompt": "hi", "max_tokens": 100_000})  # fmt: skip
        broken = await http.post(f"{url}/v1/completions", content=b"{not json")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "NotFoundError"
    assert unknown.json()["error"]["code"] == 404
    for response in (bad, too_long, broken):
        assert response.status_code == 400
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == 400


async def test_tokenize_detokenize_health(cluster: SimCluster) -> None:
    url = cluster.urls[0]
    tokenizer = HFTokenizer(cluster.config.model_dir or "")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{url}/health")).status_code == 200
        tokens = (await http.post(f"{url}/tokenize", json={"prompt": "Return the loop"})).json()
        assert tokens["tokens"] == tokenizer.encode("Return the loop")
        assert tokens["count"] == len(tokens["tokens"])
        text = await http.post(f"{url}/detokenize", json={"tokens": tokens["tokens"]})
        assert text.json()["prompt"] == "Return the loop"


async def test_prefill_decode_handoff(sim_tokenizer_dir: Path) -> None:
    profile = get_profile("llama-3.1-70b-tp4-h100")
    config = ClusterConfig(model_dir=str(sim_tokenizer_dir), served_model_name=MODEL,
                           num_replicas=2, profile=profile.name, kv_blocks=1024,
                           kv_transfer_config=NIXL_BOTH)  # fmt: skip
    prompt = list(range(3, 2003))
    async with SimCluster(config) as cluster, httpx.AsyncClient(timeout=30) as http:
        prefill_url, decode_url = cluster.urls
        prefill = await http.post(f"{prefill_url}/v1/completions", json={
            "model": MODEL, "prompt": prompt, "max_tokens": 1,
            "kv_transfer_params": {"do_remote_decode": True}})  # fmt: skip
        params = prefill.json()["kv_transfer_params"]
        assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
        assert len(params["remote_block_ids"]) == 2000 // 16
        assert params["remote_num_tokens"] == 2000
        assert params["remote_port"] == cluster.replicas[0].port
        decode = await http.post(f"{decode_url}/v1/completions", json={
            "model": MODEL, "prompt": prompt, "max_tokens": 2, "ignore_eos": True,
            "kv_transfer_params": params})  # fmt: skip
        assert decode.status_code == 200
        assert decode.json()["usage"]["completion_tokens"] == 2
        prefill_metrics, decode_metrics = await scrape(prefill_url), await scrape(decode_url)
    prefill_s = step_time_s(profile, [SeqChunk(2000, 0)])
    handoff_s = kv_transfer_time_s(profile, 2000) + step_time_s(profile, [SeqChunk(1, 1999)])
    assert handoff_s < prefill_s / 3
    ttft = "vllm:time_to_first_token_seconds_sum"
    assert metric(prefill_metrics, ttft) >= prefill_s
    assert handoff_s <= metric(decode_metrics, ttft) < (handoff_s + prefill_s) / 2
