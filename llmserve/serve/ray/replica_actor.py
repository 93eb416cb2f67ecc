"""The body of a replica's Ray actor: the same `LocalReplica` logic, behind Ray methods.

Async methods run on the actor's event loop, sync user methods in its thread pool, exactly
as on the local runtime. HTTP arrives as a buffered request (scope + body) and leaves as
batches of ASGI messages through a Ray streaming generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.types import Message

from llmserve.serve.context import NODE_IP_ENV, RequestMetadata
from llmserve.serve.exceptions import ReplicaUnavailableError
from llmserve.serve.local_runtime import LocalReplica
from llmserve.serve.ray.membership import install_replica_view
from llmserve.serve.ray.node_info import ReplicaNodeInfo
from llmserve.serve.runtime import ReplicaSpec

STATS_POLL_S = 0.02


class ReplicaActor:
    """Wrapped by ``ray.remote`` in the Ray runtime; one per replica."""

    def __init__(self, spec: ReplicaSpec, membership: Any, max_threads: int = 32) -> None:
        self.spec = spec
        self._membership = membership
        self._executor = ThreadPoolExecutor(max_threads, thread_name_prefix="llmserve-replica")
        self._replica: LocalReplica | None = None
        self._info: ReplicaNodeInfo | None = None
        self._starting: asyncio.Future[ReplicaNodeInfo] | None = None

    async def node_info(self) -> ReplicaNodeInfo | None:
        """Where it runs, once started (a restarted controller re-adopts it with this)."""
        return self._info

    async def start(self) -> ReplicaNodeInfo:
        """Start the replica once; a second call (a restarted controller adopting a
        replica that was starting) waits for the same start and gets its outcome."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        return await asyncio.shield(self._starting)

    async def _start(self) -> ReplicaNodeInfo:
        import ray

        await install_replica_view(self._membership, self.spec.replica_id)
        util: Any = ray.util
        os.environ[NODE_IP_ENV] = util.get_node_ip_address()
        self._replica = LocalReplica(self.spec, self._executor)
        await self._replica.start()
        ctx: Any = ray.get_runtime_context()
        pg = ctx.get_placement_group_id()
        self._info = ReplicaNodeInfo(
            node_id=ctx.get_node_id(),
            node_ip=util.get_node_ip_address(),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            gpu_ids=[str(g) for g in ctx.get_accelerator_ids().get("GPU", [])],
            resources={k: float(v) for k, v in ctx.get_assigned_resources().items()},
            placement_group_id=pg,
        )
        return self._info

    @property
    def replica(self) -> LocalReplica:
        if self._replica is None:
            raise ReplicaUnavailableError(f"replica {self.spec.replica_id} has not started")
        return self._replica

    async def call(self, meta: RequestMetadata, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        return await self.replica.call(meta, args, kwargs)

    async def stream(self, meta: RequestMetadata, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        async for item in self.replica.stream(meta, args, kwargs):
            yield item

    async def handle_http(self, meta: RequestMetadata, scope: dict[str, Any],
                          body: bytes) -> AsyncIterator[list[Message]]:
        """Serve one buffered HTTP request; yield the response's ASGI messages in batches."""
        replica = self.replica
        outbox: asyncio.Queue[Message] = asyncio.Queue()
        finished = asyncio.Event()
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            await outbox.put(message)

        task = asyncio.get_running_loop().create_task(
            replica.handle_http(meta, scope, receive, send))
        try:
            while True:
                getter = asyncio.ensure_future(outbox.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                batch = _drain(outbox, getter)
                if batch:
                    yield batch
                if task.done() and outbox.empty():
                    break
            finished.set()
            task.result()  # raise what the app raised, after relaying what it sent
        finally:
            finished.set()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def check_health(self) -> None:
        await self.replica.check_health()

    async def reconfigure(self, user_config: Any) -> None:
        await self.replica.reconfigure(user_config)

    async def stats(self, known: tuple[int, frozenset[str]] | None,
                    timeout_s: float) -> tuple[int, frozenset[str]]:
        """Long-poll: (num_ongoing, multiplexed model ids) once they differ from ``known``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            current = self._stats()
            if current != known or loop.time() >= deadline:
                return current
            await asyncio.sleep(STATS_POLL_S)

    def _stats(self) -> tuple[int, frozenset[str]]:
        if self._replica is None:
            return 0, frozenset()
        return self._replica.num_ongoing, self._replica.multiplexed_model_ids

    async def shutdown(self, drain_timeout_s: float) -> None:
        """Wait (bounded) for requests to finish, then run the instance's shutdown hook."""
        replica = self._replica
        if replica is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        while replica.num_ongoing > 0 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        try:
            await replica.run_shutdown_hook()
        finally:
            replica.kill("replica stopped")

    async def kill(self, reason: str) -> None:
        """Fail running requests at once, then still run the shutdown hook (free resources)."""
        replica = self._replica
        if replica is None:
            return
        replica.kill(reason)
        await replica.run_shutdown_hook()

    async def ping(self) -> None:
        return None


def _drain(outbox: asyncio.Queue[Message], getter: asyncio.Future[Message]) -> list[Message]:
    batch: list[Message] = []
    if getter.done():
        batch.append(getter.result())
    else:
        getter.cancel()
    while not outbox.empty():
        batch.append(outbox.get_nowait())
    return batch
