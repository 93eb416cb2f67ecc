"""Replicas that run in the HTTP proxies' processes on the Ray runtime (``in_proxy``).

The controller (a detached actor, away from every proxy) keeps an `InProxyRecord` for
each such replica: no process, only the spec. The membership snapshot carries the
cloudpickled spec, and every proxy (the driver's and each node's) runs its own copy, an
`InProxyReplica`: the same `LocalReplica` as on the local runtime, so requests reach it
without a Ray call. `ProxyReplicas` starts and stops a proxy's copies as the snapshot
changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from starlette.types import Receive, Scope, Send

from llmserve.serve.context import RequestMetadata
from llmserve.serve.exceptions import ReplicaUnavailableError
from llmserve.serve.local_runtime import LocalReplica
from llmserve.serve.ray.placement import declared_resources
from llmserve.serve.runtime import ReplicaSpec
from llmserve.serve.status import ReplicaNode

log = logging.getLogger("llmserve.serve")
STOP_DRAIN_MAX_S = 10.0
RETRY_S = 5.0  # a copy that failed to start in a proxy is tried again after this


class InProxyReplica(LocalReplica):
    @property
    def node(self) -> ReplicaNode:
        import ray

        util: object = ray.util
        node_ip = str(util.get_node_ip_address())  # type: ignore[attr-defined]
        return ReplicaNode(ray.get_runtime_context().get_node_id(), node_ip,
                           socket.gethostname(), os.getpid(),
                           declared_resources(self.spec.config.ray_actor_options))


class InProxyRecord:
    """The controller's side of an in-proxy replica: RUNNING as soon as it is recorded
    (each proxy starts its own copy); the controller never routes to it."""

    def __init__(self, spec: ReplicaSpec) -> None:
        self._alive = True
        self._set_spec(spec)

    def _set_spec(self, spec: ReplicaSpec) -> None:
        import ray

        pickler: Any = ray.cloudpickle
        self.spec = spec
        self.spec_bytes: bytes = pickler.dumps(spec)
        self.digest = hashlib.sha1(self.spec_bytes).hexdigest()[:16]

    @property
    def replica_id(self) -> str:
        return self.spec.replica_id

    @property
    def num_ongoing(self) -> int:
        return 0  # the proxies' load reports carry it to the autoscaler

    @property
    def multiplexed_model_ids(self) -> frozenset[str]:
        return frozenset()

    @property
    def is_alive(self) -> bool:
        return self._alive

    @property
    def node(self) -> ReplicaNode | None:
        return None  # it runs in every proxy; each proxy's status shows its own copy

    def mark_dead(self) -> None:
        self._alive = False

    async def call(self, meta: RequestMetadata, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        raise ReplicaUnavailableError(f"{self.replica_id} runs in the HTTP proxies")

    async def stream(self, meta: RequestMetadata, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        raise ReplicaUnavailableError(f"{self.replica_id} runs in the HTTP proxies")
        yield  # pragma: no cover

    async def handle_http(self, meta: RequestMetadata, scope: Scope, receive: Receive,
                          send: Send) -> None:
        raise ReplicaUnavailableError(f"{self.replica_id} runs in the HTTP proxies")

    async def check_health(self) -> None:
        return None

    async def reconfigure(self, user_config: Any) -> None:
        """The new ``user_config`` goes into the spec; proxies see its digest change in
        the snapshot and reconfigure their copies."""
        self._set_spec(replace(self.spec, config=replace(self.spec.config,
                                                         user_config=user_config)))


class ProxyReplicas:
    """One proxy's own copies of the in-proxy replicas the snapshot lists. A copy that
    fails to start is tried again every `RETRY_S` while the snapshot lists it; a copy
    whose spec changed under the same id (a new ``user_config``) is reconfigured."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._executor = ThreadPoolExecutor(32, thread_name_prefix="llmserve-replica")
        self._wanted: dict[str, tuple[str, bytes]] = {}
        self._ready: dict[str, InProxyReplica] = {}
        self._digests: dict[str, str] = {}  # of the spec each ready copy runs
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._failed: set[str] = set()  # waiting for their retry
        self._tasks: set[asyncio.Task[None]] = set()

    def sync(self, wanted: dict[str, tuple[str, bytes]]) -> None:
        """Start the replicas in ``wanted`` (id -> (digest, cloudpickled spec)) this proxy
        lacks; stop the ones it no longer lists; reconfigure those whose spec changed."""
        self._wanted = wanted
        for rid in wanted:
            if rid not in self._ready and rid not in self._starting and rid not in self._failed:
                self._begin(rid)
        for rid in [r for r in self._starting if r not in wanted]:
            self._starting.pop(rid).cancel()
        for rid in [r for r in self._ready if r not in wanted]:
            self._digests.pop(rid, None)
            self._spawn(_stop(self._ready.pop(rid)))
        for rid, (digest, spec_bytes) in wanted.items():
            if rid in self._ready and self._digests.get(rid) != digest:
                self._digests[rid] = digest
                self._spawn(_reconfigure(self._ready[rid], spec_bytes))
        self._failed &= set(wanted)

    def ready(self, replica_ids: list[str]) -> list[InProxyReplica]:
        return [self._ready[rid] for rid in replica_ids if rid in self._ready]

    def get(self, replica_id: str) -> InProxyReplica | None:
        return self._ready.get(replica_id)

    def _begin(self, replica_id: str) -> None:
        digest, spec_bytes = self._wanted[replica_id]
        self._starting[replica_id] = asyncio.get_running_loop().create_task(
            self._start(replica_id, digest, spec_bytes))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, replica_id: str, digest: str, spec_bytes: bytes) -> None:
        import ray

        try:
            spec: ReplicaSpec = ray.cloudpickle.loads(spec_bytes)
            replica = InProxyReplica(spec, self._executor)
            await replica.start()
        except Exception:
            log.exception("in-proxy replica %s failed to start in this proxy; retrying in "
                          "%.0f s", replica_id, RETRY_S)
            self._failed.add(replica_id)
            asyncio.get_running_loop().call_later(RETRY_S, self._retry, replica_id)
            return
        finally:
            self._starting.pop(replica_id, None)
        log.info("in-proxy replica %s runs in this proxy (pid %d)", replica_id, os.getpid())
        self._ready[replica_id] = replica
        self._digests[replica_id] = digest
        self._on_change()
        self.sync(self._wanted)  # dropped, or its spec changed, while it started

    def _retry(self, replica_id: str) -> None:
        self._failed.discard(replica_id)
        if replica_id in self._wanted and replica_id not in self._ready \
                and replica_id not in self._starting:
            self._begin(replica_id)

    async def shutdown(self) -> None:
        self._wanted = {}
        for task in self._starting.values():
            task.cancel()
        await asyncio.gather(*(_stop(r) for r in self._ready.values()),
                             return_exceptions=True)
        self._ready.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


async def _reconfigure(replica: InProxyReplica, spec_bytes: bytes) -> None:
    import ray

    spec: ReplicaSpec = ray.cloudpickle.loads(spec_bytes)
    if spec.config.user_config is None:
        return
    try:
        await replica.reconfigure(spec.config.user_config)
    except Exception:
        log.exception("reconfiguring in-proxy replica %s failed", replica.replica_id)


async def _stop(replica: InProxyReplica) -> None:
    """Drain (bounded by its graceful shutdown timeout), then run its shutdown hook."""
    loop = asyncio.get_running_loop()
    timeout_s = min(replica.spec.config.graceful_shutdown_timeout_s, STOP_DRAIN_MAX_S)
    deadline = loop.time() + timeout_s
    while replica.num_ongoing > 0 and loop.time() < deadline:
        await asyncio.sleep(0.01)
    try:
        await replica.run_shutdown_hook()
    except Exception:
        log.exception("shutdown hook of in-proxy replica %s failed", replica.replica_id)
    finally:
        replica.kill("replica stopped")
