"""Deployments the Ray tests run (importable, so Ray workers load them by reference)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from starlette.requests import Request

from llmserve import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Adder:
    def __init__(self, increment: int) -> None:
        self.increment = increment

    def __call__(self, x: int) -> int:  # sync: runs in the actor's thread pool
        return x + self.increment

    async def where(self) -> dict[str, object]:
        import ray

        ctx = ray.get_runtime_context()
        return {"node": ctx.get_node_id(), "pid": os.getpid(),
                "replica": serve.get_replica_context().replica_id}

    def count(self, n: int) -> Iterator[int]:
        yield from range(n)

    async def fail(self) -> None:
        raise ValueError("bad input")


api = FastAPI()


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Gateway:
    def __init__(self, adder: serve.DeploymentHandle) -> None:
        self.adder = adder

    @api.get("/add")
    async def add(self, x: int) -> dict[str, int]:
        return {"result": await self.adder.remote(x)}

    @api.get("/add_sync")
    def add_sync(self, x: int) -> dict[str, int]:  # a handle call from a thread
        return {"result": self.adder.remote(x).result(timeout_s=10)}

    @api.get("/stream")
    def stream(self, n: int) -> StreamingResponse:
        return StreamingResponse((f"{i}\n" for i in range(n)), media_type="text/plain")

    @api.post("/echo")
    async def echo(self, body: dict[str, object]) -> dict[str, object]:
        return body

    @api.get("/count")
    async def count(self, n: int) -> list[int]:
        return [i async for i in self.adder.options(stream=True).count.remote(n)]

    @api.get("/pid")
    async def pid(self) -> dict[str, int]:
        return {"pid": os.getpid()}


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Plain:
    async def __call__(self, request: Request) -> dict[str, object]:
        return {"path": request.url.path, "body": (await request.body()).decode()}


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100,
                  graceful_shutdown_timeout_s=1)
class Sleeper:
    async def __call__(self, delay_s: float) -> int:
        await asyncio.sleep(delay_s)
        return os.getpid()

    async def me_and_id(self) -> tuple[object, str]:
        return current_actor(), serve.get_replica_context().replica_id

    async def tokens(self, n: int, delay_s: float) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(delay_s)
            yield i


@serve.deployment(ray_actor_options={"num_cpus": 0, "num_gpus": 1})
class GpuUser:
    async def __call__(self) -> dict[str, object]:
        import ray

        ctx = ray.get_runtime_context()
        return {"node": ctx.get_node_id(), "gpus": [str(g) for g in ray.get_gpu_ids()],
                "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "at": time.time()}


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100,
                  graceful_shutdown_timeout_s=1)
class SlowPlain:
    """Plain HTTP ingress that answers after ``?delay_s=``."""

    async def me_and_id(self) -> tuple[object, str]:
        return current_actor(), serve.get_replica_context().replica_id

    async def __call__(self, request: Request) -> dict[str, int]:
        await asyncio.sleep(float(request.query_params.get("delay_s", "0")))
        return {"pid": os.getpid()}


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
class Fanout:
    """Calls Sleeper through a handle inside a replica (load reaches Sleeper's autoscaler
    only through the replicas' load reports)."""

    def __init__(self, sleeper: serve.DeploymentHandle) -> None:
        self.sleeper = sleeper

    async def __call__(self, delay_s: float) -> int:
        return int(await self.sleeper.remote(delay_s))


def current_actor() -> object:
    import ray

    return ray.get_runtime_context().current_actor


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, user_config={"word": "one"})
class Configurable:
    def __init__(self) -> None:
        self.word = ""
        self.running = 0

    def reconfigure(self, config: dict[str, str]) -> None:
        self.word = config["word"]

    async def __call__(self) -> tuple[str, int]:
        return self.word, os.getpid()

    async def hang(self) -> None:
        self.running += 1
        try:
            await asyncio.sleep(60)
        finally:
            self.running -= 1

    async def num_running(self) -> int:
        return self.running


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class SlowStart:
    """Takes ``start_s`` to start (a model loading), then answers with its pid."""

    async def __init__(self, start_s: float) -> None:
        await asyncio.sleep(start_s)

    async def __call__(self, request: Request) -> dict[str, int]:
        return {"pid": os.getpid()}


@serve.deployment(ray_actor_options={"in_proxy": True}, user_config={"word": "one"})
class InProxyWord:
    """Runs inside each HTTP proxy; answers with its ``user_config`` word, its pid and
    the id of this instance (a restarted copy has another)."""

    def __init__(self) -> None:
        self.word = ""
        self.instance = uuid.uuid4().hex

    def reconfigure(self, config: dict[str, str]) -> None:
        self.word = config["word"]

    async def __call__(self, request: Request) -> dict[str, object]:
        return {"word": self.word, "pid": os.getpid(), "instance": self.instance}
