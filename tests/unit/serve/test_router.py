from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmserve.serve.exceptions import BackPressureError, DeploymentUnavailableError
from llmserve.serve.router import Router
from routing import RouteRequest
from routing.round_robin import RoundRobinPolicy


class FakeReplica:
    def __init__(self, replica_id: str, model_ids: frozenset[str] = frozenset()) -> None:
        self.replica_id = replica_id
        self.multiplexed_model_ids = model_ids
        self.is_alive = True
        self.num_ongoing = 0

    async def call(self, *args: Any) -> Any:  # pragma: no cover - not used here
        raise NotImplementedError


def req(i: int, model_id: str = "") -> RouteRequest:
    return RouteRequest(f"q{i}", model_id)


def make_router(n: int, max_ongoing: int = 1, max_queued: int = -1) -> Router:
    router = Router("d", max_ongoing, max_queued, RoundRobinPolicy())
    router.set_replicas([FakeReplica(f"r{i}") for i in range(n)])  # type: ignore[list-item]
    return router


async def test_keeps_each_replica_at_max_ongoing_and_queues_fifo() -> None:
    router = make_router(2, max_ongoing=1)
    a = await router.acquire(req(1))
    b = await router.acquire(req(2))
    assert {a.replica_id, b.replica_id} == {"r0", "r1"}
    waiting = [asyncio.ensure_future(router.acquire(req(i))) for i in (3, 4)]
    await asyncio.sleep(0)
    assert router.num_queued == 2 and not any(w.done() for w in waiting)
    router.release(b, req(2))
    await asyncio.sleep(0)
    assert waiting[0].done() and not waiting[1].done()
    assert waiting[0].result().replica_id == b.replica_id
    router.release(a, req(1))
    await asyncio.sleep(0)
    assert waiting[1].result().replica_id == a.replica_id
    assert router.num_queued == 0 and router.num_ongoing == 2


async def test_back_pressure_when_queue_full() -> None:
    router = make_router(1, max_ongoing=1, max_queued=1)
    await router.acquire(req(1))
    queued = asyncio.ensure_future(router.acquire(req(2)))
    await asyncio.sleep(0)
    with pytest.raises(BackPressureError, match="1 requests already queued"):
        await router.acquire(req(3))
    queued.cancel()


async def test_cancelled_waiter_leaves_the_queue() -> None:
    router = make_router(1, max_ongoing=1)
    held = await router.acquire(req(1))
    waiter = asyncio.ensure_future(router.acquire(req(2)))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)
    assert router.num_queued == 0
    router.release(held, req(1))
    assert router.num_ongoing == 0


async def test_requests_wait_for_a_replica_when_there_is_none() -> None:
    router = Router("d", 1)
    pending = asyncio.ensure_future(router.acquire(req(1)))
    await asyncio.sleep(0)
    assert router.num_queued == 1
    router.set_replicas([FakeReplica("late")])  # type: ignore[list-item]
    assert (await pending).replica_id == "late"


async def test_prefers_replica_holding_the_model_id() -> None:
    router = Router("d", 5, policy=RoundRobinPolicy())
    router.set_replicas([FakeReplica("r0"), FakeReplica("r1", frozenset({"m"}))])  # type: ignore[list-item]
    for i in range(4):
        assert (await router.acquire(req(i, "m"))).replica_id == "r1"


async def test_close_fails_queued_and_new_requests() -> None:
    router = make_router(1, max_ongoing=1)
    await router.acquire(req(1))
    waiter = asyncio.ensure_future(router.acquire(req(2)))
    await asyncio.sleep(0)
    router.close("gone")
    with pytest.raises(DeploymentUnavailableError, match="gone"):
        await waiter
    with pytest.raises(DeploymentUnavailableError):
        await router.acquire(req(3))
