"""Subscribing to the engines' KV-cache events and feeding the routers' view of the caches.

Each engine that publishes events (vLLM's ``kv_events_config``, or the simulator's
``--kv-events-config``) gets one :class:`KVEventSubscriber`: a ZMQ SUB socket on its
``endpoint`` (and a DEALER on its ``replay_endpoint``), decoding vLLM's wire format
(:mod:`engines.kv_events`) into one :class:`~routing.kv_cache_view.ClusterCacheView` per
model. One process keeps one view per model and one subscriber per engine, whichever
ingresses use them (:class:`KVEventsHub`): every ingress of the process routes from the
same view.

Sequence numbers: a batch that skips numbers (the PUB socket dropped some) is filled in
from the replay socket; if the engine no longer has them (or has no replay socket, or
does not answer within ``replay_timeout_s``) the replica's view restarts empty. A number
that goes back means the engine restarted: its cache is empty. So does a reconnect and
``AllBlocksCleared``. A replica whose subscription is broken (not connected, undecodable
payloads, a block size that is not the router's) is not *live*: the router uses its
approximate index for it, logs it and counts it
(``llmserve_kv_events_degraded_total{reason}``); a client never sees an error from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import zmq
import zmq.asyncio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from zmq.utils.monitor import parse_monitor_message

from engines import kv_events as wire
from routing.kv_cache_view import BlockSizeMismatch, ClusterCacheView
from routing.policy import RoutingPolicy
from routing.prefix_aware import PrefixAwarePolicy, adapter_index_key
from routing.scored import ScoredPolicy

log = logging.getLogger("llmserve.kv_events")


@dataclass(frozen=True)
class EventSource:
    """Where one engine replica publishes its KV events (addresses to connect to)."""

    replica_id: str
    endpoint: str
    replay_endpoint: str | None = None
    topic: str = ""


class _Broken(Exception):
    """This subscription cannot be trusted any more; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class KVEventSubscriber:
    """One engine's events into ``view`` (run as a task; ``close`` stops it)."""

    def __init__(self, source: EventSource, model_id: str, view: ClusterCacheView,
                 counters: Counter[tuple[str, str]], *, replay_timeout_s: float = 2.0,
                 retry_s: float = 1.0) -> None:
        self.source = source
        self.model_id = model_id
        self.view = view
        self.counters = counters
        self.replay_timeout_s = replay_timeout_s
        self.retry_s = retry_s
        self.last_seq: int | None = None
        self.connected = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.view.set_live(self.source.replica_id, False)

    # ---- the loop -----------------------------------------------------------------------
    async def _run(self) -> None:
        ctx = zmq.asyncio.Context.instance()
        while True:
            sub = ctx.socket(zmq.SUB)
            monitor = sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
            try:
                sub.setsockopt(zmq.SUBSCRIBE, self.source.topic.encode())
                sub.connect(self.source.endpoint)
                await self._pump(sub, monitor)
            except _Broken as exc:
                self._degrade(exc.reason, str(exc))
                await asyncio.sleep(self.retry_s)
            except zmq.ZMQError as exc:  # e.g. an endpoint ZMQ cannot parse
                self._degrade("socket", repr(exc))
                await asyncio.sleep(max(self.retry_s, 5.0))
            finally:
                sub.disable_monitor()
                monitor.close(linger=0)
                sub.close(linger=0)

    async def _pump(self, sub: zmq.asyncio.Socket, monitor: zmq.asyncio.Socket) -> None:
        poller = zmq.asyncio.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while True:
            ready = dict(await poller.poll())
            if monitor in ready:
                self._on_monitor(parse_monitor_message(await monitor.recv_multipart()))
            if sub in ready:
                frames = await sub.recv_multipart()
                await self._on_message(frames)

    def _on_monitor(self, message: Mapping[str, object]) -> None:
        event = message.get("event")
        rid = self.source.replica_id
        if event == zmq.EVENT_CONNECTED:
            # a (re)connected engine: nothing it held before can be relied on
            self.connected = True
            self.last_seq = None
            self.view.set_live(rid, True)
            self._count("connected")
            log.info("KV events of %s (%s): connected to %s", rid, self.model_id,
                     self.source.endpoint)
        elif event == zmq.EVENT_DISCONNECTED:
            self.connected = False
            self._degrade("disconnected", f"lost {self.source.endpoint}")

    async def _on_message(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            raise _Broken("bad_frame", f"a message of {len(frames)} frames, expected 3")
        seq = _seq(frames[1])
        last = self.last_seq
        if last is not None and seq <= last:
            if seq == last:
                return  # a duplicate
            self._count("restarted")  # the numbers went back: a new engine process
            self.view.set_live(self.source.replica_id, True)
        elif last is not None and seq > last + 1:
            await self._fill_gap(last + 1, seq)
        self._apply(seq, frames[2])

    async def _fill_gap(self, first: int, upto: int) -> None:
        """Replay ``first``..``upto - 1``; when that fails, the replica's view restarts."""
        replayed = await self._replay(first, upto)
        if replayed:
            self._count("gap_replayed")
            return
        self._count("gap_lost")
        log.warning("KV events of %s: batches %d..%d lost and not replayable; its view "
                    "restarts empty", self.source.replica_id, first, upto - 1)
        self.view.set_live(self.source.replica_id, True)

    async def _replay(self, first: int, upto: int) -> bool:
        endpoint = self.source.replay_endpoint
        if endpoint is None:
            return False
        dealer = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        try:
            dealer.connect(endpoint)
            await dealer.send_multipart((b"", wire.encode_seq(first)))
            expected = first
            while True:
                if not await dealer.poll(int(self.replay_timeout_s * 1000)):
                    return False
                frames = await dealer.recv_multipart()
                if len(frames) != 4:
                    return False
                _, _, seq_frame, payload = frames
                seq = _seq(seq_frame)
                if seq_frame == wire.END_SEQ:
                    return expected >= upto
                if seq < expected or seq >= upto:
                    continue  # already applied, or live messages will bring it
                if seq != expected:
                    return False  # the engine's buffer no longer starts at ``first``
                self._apply(seq, payload)
                expected += 1
        finally:
            dealer.close(linger=0)

    def _apply(self, seq: int, payload: bytes) -> None:
        try:
            batch = wire.decode_batch(payload)
        except wire.DecodeError as exc:
            raise _Broken("undecodable", f"batch {seq}: {exc}") from None
        self.last_seq = seq
        if not self.view.is_live(self.source.replica_id):
            self.view.set_live(self.source.replica_id, True)
        try:
            apply_batch(self.view, self.model_id, self.source.replica_id, batch)
        except BlockSizeMismatch as exc:
            raise _Broken("block_size", str(exc)) from None
        self._count("batches")

    def _degrade(self, reason: str, detail: str) -> None:
        self.view.set_live(self.source.replica_id, False)
        self.last_seq = None
        self.counters[(self.model_id, "degraded:" + reason)] += 1
        log.warning("KV events of %s (%s) unusable (%s: %s): routing it by the approximate "
                    "index", self.source.replica_id, self.model_id, reason, detail)

    def _count(self, what: str) -> None:
        self.counters[(self.model_id, what)] += 1


def apply_batch(view: ClusterCacheView, model_id: str, replica_id: str,
                batch: wire.KVEventBatch) -> None:
    """One engine's decoded batch into ``view`` (raises ``BlockSizeMismatch``)."""
    for event in batch.events:
        if isinstance(event, wire.BlockStored):
            if _on_gpu(event.medium, event.group_idx):
                view.store(replica_id, adapter_index_key(model_id, event.lora_name),
                           event.parent_block_hash, event.block_hashes, event.token_ids,
                           event.block_size, first_block_salt(event))
        elif isinstance(event, wire.BlockRemoved):
            if _on_gpu(event.medium, event.group_idx):
                view.remove(replica_id, event.block_hashes)
        else:
            view.clear(replica_id)


def first_block_salt(event: wire.BlockStored) -> str | None:
    """The ``cache_salt`` of a chain's first block, from the event's untagged extra keys
    (per block: the LoRA name if any, ``(mm_identifier, offset)`` pairs, the salt, prompt
    embedding digests; vLLM's ``to_event_extra_keys``)."""
    if event.parent_block_hash is not None or not event.extra_keys:
        return None
    keys = list(event.extra_keys[0] or ())
    if event.lora_name is not None and keys and keys[0] == event.lora_name:
        keys = keys[1:]
    return next((k for k in keys if isinstance(k, str)), None)


def _seq(frame: bytes) -> int:
    try:
        return wire.decode_seq(frame)
    except wire.DecodeError as exc:
        raise _Broken("bad_frame", str(exc)) from None


def _on_gpu(medium: str | None, group_idx: int | None) -> bool:
    """Blocks of the engine's own (first) KV-cache group on the GPU: what a hit reuses."""
    return medium in (None, wire.MEDIUM_GPU) and group_idx in (None, 0)


class KVEventsHub:
    """One process's views (one per model and block size) and subscribers (one per engine
    endpoint), shared by every ingress in the process, released when the last one leaves."""

    def __init__(self) -> None:
        self.views: dict[tuple[str, int], ClusterCacheView] = {}
        self._subscribers: dict[tuple[str, str], KVEventSubscriber] = {}
        self._users: Counter[tuple[str, str]] = Counter()
        self.counters: Counter[tuple[str, str]] = Counter()

    def view(self, model_id: str, block_size: int) -> ClusterCacheView:
        key = (model_id, block_size)
        view = self.views.get(key)
        if view is None:
            view = self.views[key] = ClusterCacheView(block_size)
        return view

    def acquire(self, model_id: str, view: ClusterCacheView, source: EventSource) -> None:
        key = (model_id, source.endpoint)
        self._users[key] += 1
        if key not in self._subscribers:
            subscriber = KVEventSubscriber(source, model_id, view, self.counters)
            self._subscribers[key] = subscriber
            subscriber.start()

    async def release(self, model_id: str, source: EventSource) -> None:
        key = (model_id, source.endpoint)
        self._users[key] -= 1
        if self._users[key] <= 0:
            del self._users[key]
            subscriber = self._subscribers.pop(key, None)
            if subscriber is not None:
                await subscriber.close()
                view = subscriber.view
                view.retain_replicas([s.source.replica_id for s in self._subscribers.values()
                                      if s.view is view])

    def live_replicas(self, model_id: str) -> int:
        return sum(1 for s in self._subscribers.values()
                   if s.model_id == model_id and s.view.is_live(s.source.replica_id))

    def collect(self) -> Iterator[Metric]:
        """Prometheus collector: ``llmserve_kv_events_*``."""
        events = CounterMetricFamily("llmserve_kv_events", "KV-event subscription events "
                                     "(batches, connected, restarted, gap_replayed, "
                                     "gap_lost)", labels=["model_name", "event"])
        degraded = CounterMetricFamily("llmserve_kv_events_degraded",
                                       "Times a replica's KV events became unusable and it "
                                       "fell back to approximate prefix routing",
                                       labels=["model_name", "reason"])
        for (model, what), count in sorted(self.counters.items()):
            if what.startswith("degraded:"):
                degraded.add_metric([model, what.removeprefix("degraded:")], count)
            else:
                events.add_metric([model, what], count)
        live = GaugeMetricFamily("llmserve_kv_events_live_replicas",
                                 "Replicas routed from their KV events", labels=["model_name"])
        for model in sorted({s.model_id for s in self._subscribers.values()}):
            live.add_metric([model], self.live_replicas(model))
        yield from (events, degraded, live)


HUB = KVEventsHub()  # the process's; ingresses in one process share it


class KVEventFeed:
    """One pool's use of the hub: its view and the engines it subscribed to."""

    def __init__(self, model_id: str, view: ClusterCacheView, hub: KVEventsHub = HUB) -> None:
        self.model_id = model_id
        self.view = view
        self.hub = hub
        self.sources: dict[str, EventSource] = {}
        self._releasing: set[asyncio.Task[None]] = set()

    def update(self, sources: Iterable[EventSource]) -> None:
        """Subscribe to ``sources`` (the pool's current replicas that publish events)."""
        wanted = {s.replica_id: s for s in sources}
        for rid, source in list(self.sources.items()):
            if wanted.get(rid) != source:
                del self.sources[rid]
                task = asyncio.get_running_loop().create_task(
                    self.hub.release(self.model_id, source))
                self._releasing.add(task)
                task.add_done_callback(self._releasing.discard)
        for rid, source in wanted.items():
            if rid not in self.sources:
                self.sources[rid] = source
                self.hub.acquire(self.model_id, self.view, source)

    async def close(self) -> None:
        for source in self.sources.values():
            await self.hub.release(self.model_id, source)
        self.sources.clear()


def attach_feed(model_id: str, policy: RoutingPolicy,
                hub: KVEventsHub = HUB) -> KVEventFeed | None:
    """Give ``policy`` the process's view of ``model_id``'s caches, if it routes by prefix."""
    prefix = policy.prefix if isinstance(policy, ScoredPolicy) else policy
    if not isinstance(prefix, PrefixAwarePolicy):
        return None
    view = hub.view(model_id, prefix.block_size)
    prefix.use_kv_view(view)
    return KVEventFeed(model_id, view, hub)
