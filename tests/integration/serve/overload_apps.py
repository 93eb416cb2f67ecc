"""A graph whose innermost deployment rejects calls once it is busy (importable, so Ray
workers load it by reference): FastAPI ingress -> Middle -> Busy, and the ingress -> Busy."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from starlette.requests import Request

from llmserve import serve


@serve.deployment(max_ongoing_requests=1, max_queued_requests=0,
                  ray_actor_options={"num_cpus": 0.1})
class Busy:
    async def __call__(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Middle:
    def __init__(self, busy: serve.DeploymentHandle) -> None:
        self.busy = busy

    async def __call__(self, seconds: float) -> str:
        return str(await self.busy.remote(seconds))


api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Front:
    def __init__(self, middle: serve.DeploymentHandle, busy: serve.DeploymentHandle) -> None:
        self.middle = middle
        self.busy = busy

    @api.get("/direct")
    async def direct(self, seconds: float) -> str:
        return str(await self.busy.remote(seconds))

    @api.get("/deep")
    async def deep(self, seconds: float) -> str:
        return str(await self.middle.remote(seconds))

    @api.get("/sync")
    def sync(self, seconds: float) -> str:  # a handle call from FastAPI's thread pool
        return str(self.busy.remote(seconds).result(timeout_s=30))


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class PlainFront:
    def __init__(self, middle: serve.DeploymentHandle) -> None:
        self.middle = middle

    async def __call__(self, request: Request) -> str:
        return str(await self.middle.remote(float(request.query_params["seconds"])))
