"""Prefill and decode pools scale independently: each takes its own
``deployment_config.autoscaling_config``, and load on one pool scales that pool only."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from llmserve import serve
from llmserve.llm import build_pd_openai_app
from tests.fixtures_engines import cached_tiny_model

PREFILL = "LLMServer:prefill:sim"
DECODE = "LLMServer:decode:sim"


def pool(model_dir: str, max_replicas: int, time_scale: float,
         target: int) -> dict[str, Any]:
    return {
        "model_loading_config": {"model_id": "sim", "model_source": model_dir},
        "llm_engine": "sim",
        "engine_kwargs": {"time_scale": time_scale},  # slower than the profile
        "deployment_config": {"autoscaling_config": {
            "min_replicas": 1, "max_replicas": max_replicas, "target_ongoing_requests": target,
            "upscale_delay_s": 0, "downscale_delay_s": 30, "look_back_period_s": 0.5}},
    }


def start(prefill_time_scale: float, decode_time_scale: float, prefill_target: int,
          decode_target: int) -> str:
    """The P/D app; each pool's engines slower than the profile by its own factor. The pool
    the test loads targets 2 ongoing requests a replica; the other 4, so the burst of 12
    short requests it also sees at once does not scale it on a loaded machine."""
    model_dir = str(cached_tiny_model())
    serve.run(build_pd_openai_app({
        "prefill_config": pool(model_dir, 3, prefill_time_scale, prefill_target),
        "decode_config": pool(model_dir, 2, decode_time_scale, decode_target)}), port=0)
    return serve.http_url() or ""


def targets() -> dict[str, int]:
    deployments = serve.status().applications["default"].deployments
    return {name: deployments[name].target_replicas for name in (PREFILL, DECODE)}


async def load_and_watch(url: str, body: dict[str, Any], n: int) -> dict[str, int]:
    """``n`` requests at once; the highest target replica count of each pool meanwhile."""
    peak = {PREFILL: 0, DECODE: 0}

    async def one(client: httpx.AsyncClient, index: int) -> int:
        # a different first word each: no prompt is served from another's prefix cache
        prompt = f"request{index} {body['prompt']}"
        response = await client.post(f"{url}/v1/completions",
                                     json={"model": "sim", **body, "prompt": prompt})
        return response.status_code

    async with httpx.AsyncClient(timeout=120) as client:
        load = asyncio.gather(*(one(client, i) for i in range(n)))
        while not load.done():
            for name, value in (await asyncio.to_thread(targets)).items():
                peak[name] = max(peak[name], value)
            await asyncio.sleep(0.1)
        assert await load == [200] * n
    return peak


@pytest.mark.usefixtures("fresh_serve")
def test_long_decodes_scale_the_decode_pool_only() -> None:
    url = start(prefill_time_scale=1.0, decode_time_scale=0.1, prefill_target=4,
                decode_target=2)
    body = {"prompt": "hi", "max_tokens": 400, "ignore_eos": True}
    peak = asyncio.run(load_and_watch(url, body, 12))
    assert peak == {PREFILL: 1, DECODE: 2}


@pytest.mark.usefixtures("fresh_serve")
def test_long_prompts_scale_the_prefill_pool_only() -> None:
    url = start(prefill_time_scale=0.02, decode_time_scale=1.0, prefill_target=2,
                decode_target=4)
    body = {"prompt": "a long prompt to prefill " * 300, "max_tokens": 1}
    peak = asyncio.run(load_and_watch(url, body, 12))
    assert peak[PREFILL] >= 2 and peak[DECODE] == 1, peak
