"""The engines behind each model: membership, live stats and the routing decision.

Membership comes from the model's `LLMServer` replicas (each reports its engine URL) or
from a fixed list of URLs (``--worker-urls``). Stats come from each engine's own
``/metrics``, read in the background; the router adds its own in-flight counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from engines.protocol import Engine, EngineStats
from engines.registry import make_engine
from llmserve.lora.residency import ReplicaAdapters
from llmserve.openai.background import keep_running
from llmserve.openai.breaker import is_failing, should_eject
from llmserve.openai.engine_auth import EngineKeys, bearer_headers
from llmserve.openai.kv_events import EventSource, KVEventFeed, attach_feed
from llmserve.openai.tls import client_ssl_context
from routing import Candidate, RouteRequest, RoutingPolicy, make_policy
from routing.decision import RANKED, SINGLE, RoutingDecision
from routing.dispatch import Dispatcher
from routing.registry import policy_accepts

log = logging.getLogger("llmserve.openai")

DEFAULT_POLICY = "prefix_aware"


@dataclass
class Endpoint:
    key: str
    url: str
    ready: bool = True
    stats: EngineStats = field(default_factory=EngineStats)
    stats_at_s: float = 0.0
    failures: int = 0
    consecutive_failures: int = 0  # stats reads and connects in a row (see breaker.py)
    restarts: int = 0  # of its engine process, as its LLMServer reports
    lora: ReplicaAdapters = field(default_factory=ReplicaAdapters)  # adapters loaded there
    kv_events: EventSource | None = None
    api_key: str | None = field(default=None, repr=False)  # the engine demands it
    auth: dict[str, str] = field(default_factory=dict, repr=False)  # its header, built once

    def __post_init__(self) -> None:
        self.auth = bearer_headers(self.api_key)

    def candidate(self, in_flight: int) -> Candidate:
        stats = self.stats.as_mapping()
        adapters = frozenset(self.stats.running_lora_adapters) | self.lora.resident
        return Candidate(self.key, in_flight, 0, adapters, stats)


class ModelPool:
    """The engines serving one model id and the policy that picks among them."""

    def __init__(self, model_id: str, engine: Engine, policy: RoutingPolicy,
                 handle: Any = None, urls: Sequence[str] = (),
                 kv_events: Sequence[EventSource | None] = (),
                 api_key: str | None = None) -> None:
        self.model_id = model_id
        self.api_key = api_key  # of the engines given by URL
        self.engine = engine
        self.handle = handle
        self.policy_name = type(policy).__name__
        self.last_decision: RoutingDecision = SINGLE  # of the last choose(), for metrics
        self.endpoints: dict[str, Endpoint] = {u: Endpoint(u, u.rstrip("/"), api_key=api_key)
                                               for u in urls}
        self.dispatcher = Dispatcher(policy, list(self.endpoints))
        for endpoint, source in zip(self.endpoints.values(), kv_events, strict=False):
            endpoint.kv_events = source
        # the engines' KV events, when they publish them (launched engines may)
        self.kv_feed: KVEventFeed | None = None
        if handle is not None or any(kv_events):
            self.kv_feed = attach_feed(model_id, policy)
        self._update_kv_feed()

    def _update_kv_feed(self) -> None:
        if self.kv_feed is not None:
            self.kv_feed.update(e.kv_events for e in self.endpoints.values()
                                if e.kv_events is not None)

    @property
    def policy(self) -> RoutingPolicy:
        return self.dispatcher.policy

    @property
    def in_flight(self) -> int:
        return self.dispatcher.num_in_flight

    def in_flight_of(self, endpoint: Endpoint) -> int:
        return self.dispatcher.in_flight_of(endpoint.key)

    def choose(self, request: RouteRequest, only_urls: Sequence[str] | None = None,
               exclude: Collection[str] = ()) -> Endpoint | None:
        """Route ``request`` to a ready engine (counted in flight until ``finish``); with
        ``only_urls``, one of those (the workers listing the request's adapter); never one
        in ``exclude`` (engines this request could not reach)."""
        ready = [e for e in self.endpoints.values()
                 if e.ready and e.key not in exclude
                 and (only_urls is None or e.url in only_urls)]
        if not ready:
            return None
        if len(ready) == 1:
            chosen = ready[0]
            self.last_decision = SINGLE
            self.dispatcher.routed(request, chosen.key)
            return chosen
        dispatcher = self.dispatcher
        key = dispatcher.choose(request, [e.candidate(dispatcher.in_flight_of(e.key))
                                          for e in ready])
        self.last_decision = self.policy.last_decision or RANKED
        return self.endpoints[key] if key is not None else None

    def first_token(self, endpoint: Endpoint, request: RouteRequest) -> None:
        self.dispatcher.first_token(request, endpoint.key)

    def finish(self, endpoint: Endpoint, request: RouteRequest, *, failed: bool) -> None:
        if failed:
            endpoint.failures += 1
        self.dispatcher.finished(request, endpoint.key)

    def add_url(self, url: str, kv_events: EventSource | None = None) -> None:
        """A worker given by URL that came up after the gateway started (``kv_events``:
        where it publishes KV-cache events; subscribed to from now on)."""
        url = url.rstrip("/")
        if url not in self.endpoints:
            self.endpoints[url] = Endpoint(url, url, kv_events=kv_events, api_key=self.api_key)
            self.dispatcher.set_replicas(list(self.endpoints))
            if kv_events is not None and self.kv_feed is None:
                self.kv_feed = attach_feed(self.model_id, self.policy)
            self._update_kv_feed()

    def mark_unreachable(self, endpoint: Endpoint) -> None:
        """A connection to it failed."""
        self.note_failure(endpoint, "connect failed")

    def note_failure(self, endpoint: Endpoint, reason: str) -> None:
        """Eject it after several failures in a row, unless it is the last one routable."""
        endpoint.consecutive_failures += 1
        others = sum(1 for e in self.endpoints.values() if e.ready and e is not endpoint)
        if endpoint.ready and should_eject(endpoint.consecutive_failures, others):
            endpoint.ready = False
            log.warning("engine %s for %r: %d failures in a row (%s); no traffic until it "
                        "answers a probe", endpoint.url, self.model_id,
                        endpoint.consecutive_failures, reason)

    def note_success(self, endpoint: Endpoint) -> None:
        if not endpoint.ready:
            log.info("engine %s for %r answers again", endpoint.url, self.model_id)
        endpoint.consecutive_failures = 0
        endpoint.ready = True

    @property
    def is_down(self) -> bool:
        """No engine to serve from: none routable, or every one failing."""
        return all(not e.ready or is_failing(e.consecutive_failures)
                   for e in self.endpoints.values())

    def membership_changed(self) -> bool:
        """The deployment's running replicas differ from the engines we know (cheap)."""
        if self.handle is None:
            return False
        from llmserve.serve.handle import replica_ids

        return set(replica_ids(self.handle)) != self.endpoints.keys()

    async def refresh_members(self) -> None:
        if self.handle is None:
            return
        from llmserve.serve.handle import replica_ids

        ids = set(replica_ids(self.handle))
        changed = False
        for key in list(self.endpoints):
            if key not in ids:
                del self.endpoints[key]
                changed = True
        for rid in ids:
            try:
                info = await self.handle.options(replica_id=rid).endpoint.remote()
            except Exception as exc:  # the replica is going away; the next round decides
                log.debug("no endpoint from %s: %r", rid, exc)
                continue
            current = self.endpoints.get(rid)
            kv_events = _event_source(rid, info)
            if current is None or current.url != info.url or current.kv_events != kv_events \
                    or current.api_key != info.api_key:
                self.endpoints[rid] = Endpoint(rid, info.url, info.ready, kv_events=kv_events,
                                               api_key=info.api_key)
                changed = True
            else:
                current.ready = info.ready and current.ready
                if current.restarts != info.restarts:  # a new engine: no adapters loaded
                    current.lora = ReplicaAdapters()
            self.endpoints[rid].restarts = info.restarts
        if changed:
            self.dispatcher.set_replicas(list(self.endpoints))
            self._update_kv_feed()

    async def refresh_stats(self, client: httpx.AsyncClient) -> None:
        await asyncio.gather(*(self._read_stats(client, e) for e in self.endpoints.values()))

    async def _read_stats(self, client: httpx.AsyncClient, endpoint: Endpoint) -> None:
        try:
            response = await client.get(endpoint.url + self.engine.metrics_path, timeout=2.0)
            response.raise_for_status()
            endpoint.stats = self.engine.parse_stats(response.text)
            endpoint.stats_at_s = time.monotonic()
            self.note_success(endpoint)
        except (httpx.HTTPError, ValueError) as exc:
            self.note_failure(endpoint, f"stats: {exc!r}")


def _event_source(replica_id: str, info: Any) -> EventSource | None:
    """Where the replica's engine publishes KV events (``EngineEndpointInfo.kv_events``)."""
    addresses = info.kv_events
    if addresses is None:
        return None
    endpoint, replay, topic = addresses
    return EventSource(replica_id, endpoint, replay, topic)


class EngineDirectory:
    """All models' pools, kept fresh by one background task."""

    def __init__(self, pools: dict[str, ModelPool], refresh_s: float = 0.5,
                 worker_keys: Sequence[tuple[str, str | None]] = ()) -> None:
        self.pools = pools
        self.refresh_s = refresh_s
        self.worker_keys = list(worker_keys)  # (url, key) of workers not in a pool yet
        self.keys = EngineKeys()  # every engine call through `client` sends its engine's key
        self.client = httpx.AsyncClient(trust_env=False, verify=client_ssl_context(),
                                        auth=self.keys)
        self._task: asyncio.Task[None] | None = None
        self.sync_keys()

    def sync_keys(self) -> None:
        self.keys.replace_all([*self.worker_keys,
                               *((e.url, e.api_key) for pool in self.pools.values()
                                 for e in pool.endpoints.values())])

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def refresh(self) -> None:
        pools = list(self.pools.values())  # a pool may be added meanwhile (late workers)
        for pool in pools:
            await pool.refresh_members()
        self.sync_keys()
        await asyncio.gather(*(p.refresh_stats(self.client) for p in pools))

    async def refresh_pool(self, pool: ModelPool) -> None:
        await pool.refresh_members()
        self.sync_keys()
        await pool.refresh_stats(self.client)

    async def _run(self) -> None:
        await keep_running("engine directory refresh", self.refresh, self.refresh_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for pool in self.pools.values():
            if pool.kv_feed is not None:
                await pool.kv_feed.close()
        await self.client.aclose()


# routing_config keys read by the ingress itself, not passed to the policy
GATEWAY_ROUTING_KEYS = ("tokenizer_source", "kv_events")


def make_pool(model_id: str, engine_name: str, routing_config: dict[str, Any],
              handle: Any = None, urls: Sequence[str] = (),
              kv_events: Sequence[EventSource | None] = (),
              api_key: str | None = None) -> ModelPool:
    options = {k: v for k, v in routing_config.items() if k not in GATEWAY_ROUTING_KEYS}
    name = options.pop("policy", DEFAULT_POLICY)
    if "block_size" in options and not policy_accepts(name, "block_size"):
        options.pop("block_size")  # filled in from engine_kwargs; this policy has no use for it
    policy = make_policy(name, **options)
    pool = ModelPool(model_id, make_engine(engine_name), policy, handle, urls, kv_events,
                     api_key)
    pool.policy_name = name
    return pool
