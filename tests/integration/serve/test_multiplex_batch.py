"""Multiplexing and batching through handles and over HTTP."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from starlette.requests import Request

from llmserve import serve

pytestmark = pytest.mark.usefixtures("serve_instance")


@serve.deployment(num_replicas=3, max_ongoing_requests=8)
class ModelHost:
    def __init__(self) -> None:
        self.loads: list[str] = []

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        self.loads.append(model_id)
        return f"model-{model_id}"

    async def __call__(self, request: Request) -> dict[str, str]:
        model = await self.get_model(serve.get_multiplexed_model_id())
        return {"model": model, "replica": serve.get_replica_context().replica_id}

    async def predict(self, x: int) -> tuple[str, str]:
        model = await self.get_model(serve.get_multiplexed_model_id())
        return model, serve.get_replica_context().replica_id


def test_router_sticks_to_the_replica_holding_the_model() -> None:
    handle = serve.run(ModelHost.bind(), port=0)
    first_model, home = handle.options(multiplexed_model_id="a").predict.remote(0).result()
    assert first_model == "model-a"
    replicas = {handle.options(multiplexed_model_id="a").predict.remote(i).result()[1]
                for i in range(20)}
    assert replicas == {home}
    url = serve.http_url()
    body = httpx.get(url, headers={"serve_multiplexed_model_id": "a"}).json()
    assert body == {"model": "model-a", "replica": home}


@serve.deployment(max_ongoing_requests=32)
class BatchedSquare:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.1)
    async def square(self, xs: list[int]) -> list[int]:
        self.sizes.append(len(xs))
        return [x * x for x in xs]

    async def __call__(self, request: Request) -> int:
        return await self.square(int(request.query_params["x"]))

    def batch_sizes(self) -> list[int]:
        return self.sizes


def test_batching_over_http_and_handles() -> None:
    handle = serve.run(BatchedSquare.bind(), port=0)
    url = serve.http_url()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda x: httpx.get(url, params={"x": x}, timeout=10).json(),
                                range(16)))
    assert results == [x * x for x in range(16)]
    sizes = handle.batch_sizes.remote().result()
    assert sum(sizes) == 16 and max(sizes) > 1

    async def many() -> list[int]:
        return list(await asyncio.gather(*(handle.square.remote(x) for x in range(8))))

    assert asyncio.run(many()) == [x * x for x in range(8)]
    assert handle.batch_sizes.remote().result()[-1] == 8
