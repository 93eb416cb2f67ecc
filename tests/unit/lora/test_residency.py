"""Per-replica adapter residency: LRU, in-flight guard, single-flight loads."""

from __future__ import annotations

import asyncio

import pytest

from llmserve.lora.errors import AdapterUnavailable
from llmserve.lora.residency import ReplicaAdapters


class FakeEngine:
    """Counts the loads and unloads the residency asks for (an in-tree stand-in)."""

    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.unloaded: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    def load(self, name: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            self.loaded.append(name)
        return run

    async def unload(self, name: str) -> None:
        self.unloaded.append(name)


async def use(replica: ReplicaAdapters, engine: FakeEngine, name: str, capacity: int = 2,
              wait_s: float = 1.0) -> bool:
    return await replica.acquire(name, capacity, engine.load(name), engine.unload,
                                 wait_s=wait_s)


async def test_first_use_loads_then_hits() -> None:
    replica, engine = ReplicaAdapters(), FakeEngine()
    assert await use(replica, engine, "a") is True
    replica.release("a")
    assert await use(replica, engine, "a") is False
    assert engine.loaded == ["a"]
    assert replica.resident == {"a"}


async def test_least_recently_used_is_evicted() -> None:
    replica, engine = ReplicaAdapters(), FakeEngine()
    for name in ("a", "b", "a", "c"):
        await use(replica, engine, name)
        replica.release(name)
    assert engine.unloaded == ["b"]
    assert replica.resident == {"a", "c"}


async def test_an_adapter_in_use_is_not_evicted() -> None:
    replica, engine = ReplicaAdapters(), FakeEngine()
    await use(replica, engine, "a")  # still in flight
    await use(replica, engine, "b")
    replica.release("b")
    await use(replica, engine, "c")  # evicts b, the idle one, although a is older
    assert engine.unloaded == ["b"]
    assert replica.resident == {"a", "c"}


async def test_all_slots_busy_waits_for_a_release() -> None:
    replica, engine = ReplicaAdapters(), FakeEngine()
    await use(replica, engine, "a", capacity=1)
    waiting = asyncio.ensure_future(use(replica, engine, "b", capacity=1, wait_s=5.0))
    await asyncio.sleep(0.05)
    assert not waiting.done() and engine.unloaded == []
    replica.release("a")
    assert await asyncio.wait_for(waiting, 1.0) is True
    assert engine.unloaded == ["a"] and replica.resident == {"b"}


async def test_all_slots_busy_past_the_wait_is_503() -> None:
    replica, engine = ReplicaAdapters(), FakeEngine()
    await use(replica, engine, "a", capacity=1)
    with pytest.raises(AdapterUnavailable, match="all 1 adapter slots"):
        await use(replica, engine, "b", capacity=1, wait_s=0.05)
    assert replica.resident == {"a"}


async def test_concurrent_first_uses_share_one_load() -> None:
    replica, engine = ReplicaAdapters(), FakeEngine()
    engine.gate.clear()
    users = [asyncio.ensure_future(use(replica, engine, "a")) for _ in range(5)]
    await asyncio.sleep(0.01)
    engine.gate.set()
    assert await asyncio.gather(*users) == [True] * 5
    assert engine.loaded == ["a"]
    assert replica.in_flight("a") == 5


async def test_a_failed_load_answers_every_waiter() -> None:
    replica, engine = ReplicaAdapters(), FakeEngine()
    engine.gate.clear()
    engine.fail = RuntimeError("bad weights")
    users = [asyncio.ensure_future(use(replica, engine, "a")) for _ in range(3)]
    await asyncio.sleep(0.01)
    engine.gate.set()
    results = await asyncio.gather(*users, return_exceptions=True)
    assert [str(r) for r in results] == ["bad weights"] * 3
    assert replica.resident == frozenset() and replica.in_flight("a") == 0
    engine.fail = None
    assert await use(replica, engine, "a") is True  # a later request tries again


async def test_forget_makes_the_next_use_load_again() -> None:
    replica, engine = ReplicaAdapters(), FakeEngine()
    await use(replica, engine, "a")
    replica.release("a")
    replica.forget("a")
    assert await use(replica, engine, "a") is True
    assert engine.loaded == ["a", "a"]


async def test_loads_of_many_adapters_at_once_take_turns_for_the_slots() -> None:
    replica, engine = ReplicaAdapters(), FakeEngine()
    users = [asyncio.ensure_future(use(replica, engine, name, capacity=2))
             for name in ("a", "b", "c", "d")]
    done, waiting = await asyncio.wait(users, timeout=0.1)
    assert len(done) == 2 and len(waiting) == 2  # two slots; the other two wait
    for _task in done:
        replica.release(next(n for n in ("a", "b", "c", "d") if n in engine.loaded
                             and replica.in_flight(n)))
    assert await asyncio.wait_for(asyncio.gather(*waiting), 1.0) == [True, True]
    assert sorted(engine.loaded) == ["a", "b", "c", "d"] and len(engine.unloaded) == 2
