"""The KV-event subscriber against the simulator's publisher (vLLM's wire protocol) on
loopback ZMQ sockets: gaps replayed, restarts and clears empty the view, garbage degrades."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
import zmq

from engines import kv_events as wire
from engines.sim.event_publisher import KVEventsConfig, ZmqEventPublisher
from engines.sim.kv_cache import RemovedBlock, StoredBlocks
from llmserve.openai.kv_events import EventSource, KVEventsHub, KVEventSubscriber
from routing.block_hash import block_hashes
from routing.kv_cache_view import ClusterCacheView
from tests.e2e.conftest import free_port_run

BS = 16
RID = "replica-0"


def stored(first: int, count: int = 1, parent: bytes | None = None) -> StoredBlocks:
    tokens = tuple(range(first * BS, (first + count) * BS))
    hashes = tuple(bytes([first + i]) * 32 for i in range(count))
    return StoredBlocks(hashes, parent, tokens, BS, None, (None,) * count)


def tokens_of(first: int, count: int) -> list[int]:
    return list(range(first * BS, (first + count) * BS))


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class Rig:
    def __init__(self) -> None:
        port = free_port_run(2)
        replay = port + 1
        self.config = KVEventsConfig.from_mapping({
            "enable_kv_cache_events": True, "endpoint": f"tcp://*:{port}",
            "replay_endpoint": f"tcp://*:{replay}", "topic": "t"})
        self.source = EventSource(RID, f"tcp://127.0.0.1:{port}",
                                  f"tcp://127.0.0.1:{replay}", "t")
        self.view = ClusterCacheView(BS)
        self.counters: Counter[tuple[str, str]] = Counter()
        self.publisher = ZmqEventPublisher(self.config)
        self.subscriber = KVEventSubscriber(self.source, "m", self.view, self.counters,
                                            replay_timeout_s=1.0, retry_s=0.05)

    def depth(self, first: int, count: int) -> int:
        return self.view.match("m", block_hashes(tokens_of(first, count), BS)).get(RID, 0)

    async def connected(self) -> None:
        """Publish until the subscription is through (a PUB drops what precedes it)."""
        probe = stored(200)
        deadline = time.monotonic() + 5
        while not self.view.held_blocks(RID):
            assert time.monotonic() < deadline, "the subscriber never received anything"
            self.publisher.publish([probe])
            await asyncio.sleep(0.02)
        self.publisher.publish([RemovedBlock(probe.block_hashes[0])] * self.view.held_blocks(RID))
        await until(lambda: self.view.held_blocks(RID) == 0)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    r.publisher.start()
    r.subscriber.start()
    try:
        await r.connected()
        yield r
    finally:
        await r.subscriber.close()
        await r.publisher.close()


async def test_stored_and_removed_blocks_reach_the_view(rig: Rig) -> None:
    first = stored(1, 3)
    rig.publisher.publish([first])
    await until(lambda: rig.depth(1, 3) == 3)
    rig.publisher.publish([RemovedBlock(first.block_hashes[1])])
    await until(lambda: rig.depth(1, 3) == 1)
    assert rig.counters[("m", "batches")] >= 2


async def test_a_gap_is_filled_from_the_replay_socket(rig: Rig) -> None:
    rig.publisher.publish([stored(1)])
    await until(lambda: rig.depth(1, 1) == 1)
    # two batches the subscriber never gets (the engine's PUB dropped them)...
    pub = rig.publisher._pub
    rig.publisher._pub = zmq.Context.instance().socket(zmq.PUB)  # sends nowhere
    rig.publisher.publish([stored(2, 1, parent=None)])
    rig.publisher.publish([stored(3, 1, parent=None)])
    rig.publisher._pub.close(linger=0)
    rig.publisher._pub = pub
    rig.publisher.publish([stored(4)])  # ...then one it does: seq jumps by 3
    await until(lambda: rig.depth(4, 1) == 1)
    assert rig.depth(2, 1) == 1 and rig.depth(3, 1) == 1
    assert rig.counters[("m", "gap_replayed")] == 1
    assert rig.depth(1, 1) == 1  # nothing was thrown away


async def test_an_unreplayable_gap_restarts_the_view_empty(rig: Rig) -> None:
    rig.publisher.publish([stored(1)])
    await until(lambda: rig.depth(1, 1) == 1)
    rig.publisher._seq += 5  # batches that neither the PUB nor the buffer has
    rig.publisher.publish([stored(4)])
    await until(lambda: rig.depth(4, 1) == 1)
    assert rig.depth(1, 1) == 0
    assert rig.counters[("m", "gap_lost")] == 1


async def test_all_blocks_cleared_empties_the_replica(rig: Rig) -> None:
    rig.publisher.publish([stored(1, 2)])
    await until(lambda: rig.depth(1, 2) == 2)
    rig.publisher.publish([wire.AllBlocksCleared()])  # type: ignore[list-item]
    await until(lambda: rig.view.held_blocks(RID) == 0)
    assert rig.depth(1, 2) == 0


async def test_an_engine_restart_empties_the_replica(rig: Rig) -> None:
    rig.publisher.publish([stored(1, 2)])
    await until(lambda: rig.depth(1, 2) == 2)
    await rig.publisher.close()  # the engine goes away...
    await until(lambda: not rig.view.is_live(RID))
    assert rig.counters[("m", "degraded:disconnected")] == 1
    rig.publisher = ZmqEventPublisher(rig.config)  # ...and a new one starts at seq 0
    rig.publisher.start()
    await until(lambda: rig.view.is_live(RID))
    assert rig.depth(1, 2) == 0
    rig.publisher.publish([stored(5)])
    await until(lambda: rig.depth(5, 1) == 1)


async def test_undecodable_payloads_degrade_the_replica_and_recover(rig: Rig) -> None:
    rig.publisher.publish([stored(1)])
    await until(lambda: rig.depth(1, 1) == 1)
    rig.publisher._pub.send_multipart((b"t", wire.encode_seq(rig.publisher._seq),
                                       b"not msgpack"))
    rig.publisher._seq += 1
    await until(lambda: rig.counters[("m", "degraded:undecodable")] == 1)
    assert rig.depth(1, 1) == 0
    await rig.connected()  # it resubscribes and is live again
    assert rig.view.is_live(RID)


async def test_the_hub_shares_one_subscriber_per_engine_and_exports_metrics() -> None:
    hub = KVEventsHub()
    rig = Rig()
    rig.publisher.start()
    view = hub.view("m", BS)
    assert hub.view("m", BS) is view
    hub.acquire("m", view, rig.source)
    hub.acquire("m", view, rig.source)  # a second ingress of the process
    assert len(hub._subscribers) == 1
    try:
        await until(lambda: view.is_live(RID))
        names = {m.name: m for m in hub.collect()}
        live = names["llmserve_kv_events_live_replicas"].samples
        assert [s.value for s in live] == [1.0]
        await hub.release("m", rig.source)
        assert len(hub._subscribers) == 1
        await hub.release("m", rig.source)
        assert not hub._subscribers and not view.is_live(RID)
    finally:
        await rig.publisher.close()


async def test_an_endpoint_zmq_cannot_use_degrades_instead_of_failing() -> None:
    view = ClusterCacheView(BS)
    counters: Counter[tuple[str, str]] = Counter()
    subscriber = KVEventSubscriber(EventSource(RID, "tcp://no-port-here"), "m", view,
                                   counters, retry_s=0.05)
    subscriber.start()
    try:
        await until(lambda: counters[("m", "degraded:socket")] >= 1)
        assert not view.is_live(RID)
    finally:
        await subscriber.close()
