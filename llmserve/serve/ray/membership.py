"""Who serves each deployment, shared with every replica by long-poll.

The driver's controller publishes a snapshot (deployments, their router settings and
running replica actors) to one `MembershipActor` whenever it changes. Each replica actor
holds a `ReplicaView`: one `Router` per deployment rebuilt from the snapshot, so
`DeploymentHandle.remote()` inside a replica routes straight to other replica actors.
Replicas report their routers' load back (in flight, queued and ``report_ongoing``), and
the controller's autoscaler sees the sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from llmserve.serve.exceptions import DeploymentUnavailableError
from llmserve.serve.handle_context import HandleContext, install_handle_context
from llmserve.serve.metrics import DeploymentFigures
from llmserve.serve.ray.refs import RayReplicaRef
from llmserve.serve.router import Router
from routing import make_policy

log = logging.getLogger("llmserve.serve")
DeploymentKey = tuple[str, str]  # (app, deployment)
LISTEN_TIMEOUT_S = 10.0
LISTEN_RETRY_S = 0.2
REPORT_PERIOD_S = 0.1
REPORT_HEARTBEAT_S = 1.0
REPORT_TTL_S = 3.0
FIGURES_TTL_S = 10.0  # the controller sends its gauges every CORE_FIGURES_PERIOD_S


@dataclass(frozen=True)
class ReplicaEntry:
    replica_id: str
    actor: Any
    model_ids: frozenset[str] = frozenset()

    def key(self) -> tuple[str, tuple[str, ...]]:
        return self.replica_id, tuple(sorted(self.model_ids))


@dataclass(frozen=True)
class DeploymentView:
    max_ongoing: int
    max_queued: int
    router_config: dict[str, Any] = field(default_factory=dict)
    replicas: tuple[ReplicaEntry, ...] = ()
    route_prefix: str | None = None  # set on an application's ingress deployment only
    is_ingress: bool = False
    # replicas every proxy runs in its own process: (replica id, spec digest,
    # cloudpickled spec)
    in_proxy: tuple[tuple[str, str, bytes], ...] = ()

    def key(self) -> tuple[Any, ...]:
        return (self.max_ongoing, self.max_queued, repr(sorted(self.router_config.items())),
                tuple(r.key() for r in self.replicas), self.route_prefix, self.is_ingress,
                tuple((rid, digest) for rid, digest, _ in self.in_proxy))


Snapshot = dict[DeploymentKey, DeploymentView]


def snapshot_key(snapshot: Snapshot) -> tuple[Any, ...]:
    return tuple(sorted((k, v.key()) for k, v in snapshot.items()))


class MembershipActor:
    """A small async actor: the latest snapshot, waiters on the next, and load reports.

    Restartable (``max_restarts=-1`` on the detached runtime): a restarted one holds no
    snapshot and answers no listener until the controller has published again, which it
    does as soon as `poll` shows a version other than its own (`RayRuntime`)."""

    def __init__(self) -> None:
        self.version = 0
        self.snapshot: Snapshot = {}
        self.has_snapshot = False
        self._next: asyncio.Future[None] | None = None
        self._loads: dict[str, tuple[float, dict[DeploymentKey, float]]] = {}
        self._queued: dict[str, dict[DeploymentKey, float]] = {}  # of each load report
        self._figures: tuple[float, str, tuple[DeploymentFigures, ...]] | None = None
        self._applied: dict[str, int] = {}  # source -> the version it last asked past

    async def publish(self, version: int, snapshot: Snapshot) -> None:
        self.version, self.snapshot = version, snapshot
        self.has_snapshot = True
        if self._next is not None and not self._next.done():
            self._next.set_result(None)
        self._next = None

    async def current_version(self) -> int:
        return self.version

    async def listen(self, known_version: int, timeout_s: float,
                     source_id: str = "") -> tuple[int, Snapshot] | None:
        """The snapshot once its version differs from ``known_version`` (None on timeout).

        A source asking past ``known_version`` has applied it (see `wait_applied`)."""
        if source_id:
            self._applied[source_id] = known_version
        if self.has_snapshot and known_version != self.version:
            return self.version, self.snapshot
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._next), timeout_s)
            return self.version, self.snapshot
        return None

    async def wait_applied(self, version: int, timeout_s: float) -> bool:
        """Wait until every replica in the snapshot has applied ``version`` (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            members = {r.replica_id for view in self.snapshot.values() for r in view.replicas}
            if all(self._applied.get(m, -1) >= version for m in members):
                return True
            await asyncio.sleep(0.005)
        return False

    async def report(self, source_id: str, loads: dict[DeploymentKey, float],
                     queued: dict[DeploymentKey, float] | None = None) -> None:
        """A source's load per deployment, and how much of it waits in its queues."""
        self._loads[source_id] = (time.monotonic(), loads)
        self._queued[source_id] = queued or {}

    async def poll(self) -> tuple[int, dict[DeploymentKey, float]]:
        """The version it holds (0 after a restart) and `loads`, for the controller."""
        return self.version, await self.loads()

    async def loads(self) -> dict[DeploymentKey, float]:
        """Sum of the fresh load reports, per deployment."""
        now = time.monotonic()
        total: dict[DeploymentKey, float] = {}
        for source, (at, loads) in list(self._loads.items()):
            if now - at > REPORT_TTL_S:
                del self._loads[source]
                self._queued.pop(source, None)
                continue
            for key, value in loads.items():
                total[key] = total.get(key, 0.0) + value
        return total

    async def queued(self) -> dict[DeploymentKey, float]:
        """Of `loads`, the requests waiting in the reporting routers' queues."""
        await self.loads()  # drops the stale reports
        total: dict[DeploymentKey, float] = {}
        for queued in self._queued.values():
            for key, value in queued.items():
                total[key] = total.get(key, 0.0) + value
        return total

    async def publish_figures(self, controller: str,
                              figures: tuple[DeploymentFigures, ...]) -> None:
        """The controller's deployment gauges, for the gateways' ``/metrics``."""
        self._figures = (time.monotonic(), controller, figures)

    async def figures(self) -> tuple[str, tuple[DeploymentFigures, ...]]:
        """The latest deployment gauges; none once the controller stopped sending them."""
        if self._figures is None or time.monotonic() - self._figures[0] > FIGURES_TTL_S:
            return "", ()
        return self._figures[1], self._figures[2]


class ReplicaView:
    """Inside a replica actor (or a proxy): the routers its handles send calls through."""

    def __init__(self, membership: Any, source_id: str,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.membership = membership
        self.source_id = source_id
        self.loop = loop
        self.version = -1
        self._routers: dict[DeploymentKey, Router] = {}
        self._views: dict[DeploymentKey, DeploymentView] = {}
        self._refs: dict[str, RayReplicaRef] = {}
        self._actor_refs: dict[DeploymentKey, list[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def router_for(self, app_name: str, deployment: str) -> Router:
        router = self._routers.get((app_name, deployment))
        if router is None:
            raise DeploymentUnavailableError(
                f"deployment {deployment!r} of app {app_name!r} does not exist")
        return router

    def apply(self, version: int, snapshot: Snapshot) -> None:
        self.version = version
        for key in set(self._routers) - set(snapshot):
            self._routers.pop(key).close(f"deployment {key[1]!r} was deleted")
            self._views.pop(key, None)
        live: set[str] = set()
        for key, view in snapshot.items():
            router = self._router(key, view)
            refs: list[Any] = []
            for entry in view.replicas:
                ref = self._refs.get(entry.replica_id)
                if ref is None:
                    ref = self._refs[entry.replica_id] = RayReplicaRef(entry.replica_id,
                                                                       entry.actor)
                ref.set_model_ids(entry.model_ids)
                refs.append(ref)
                live.add(entry.replica_id)
            self._actor_refs[key] = refs
            router.set_replicas(refs + self.local_replicas(view))
        for rid in set(self._refs) - live:
            del self._refs[rid]
        for key in set(self._actor_refs) - set(snapshot):
            del self._actor_refs[key]

    def local_replicas(self, view: DeploymentView) -> list[Any]:
        """Replicas of ``view`` running in this process (a proxy's in-proxy replicas)."""
        return []

    def refresh_local_replicas(self) -> None:
        """Route to local replicas that have started since the last snapshot."""
        for key, view in self._views.items():
            router = self._routers.get(key)
            if router is not None and view.in_proxy:
                router.set_replicas(self._actor_refs.get(key, []) + self.local_replicas(view))

    def _router(self, key: DeploymentKey, view: DeploymentView) -> Router:
        router = self._routers.get(key)
        old = self._views.get(key)
        if router is None or old is None or old.router_config != view.router_config:
            cfg = dict(view.router_config)
            policy = make_policy(cfg.pop("policy", "power_of_two"), **cfg)
            fresh = Router(key[1], view.max_ongoing, view.max_queued, policy)
            if router is not None:
                router.close(f"deployment {key[1]!r} changed its router")
            router = self._routers[key] = fresh
        router.max_ongoing, router.max_queued = view.max_ongoing, view.max_queued
        self._views[key] = view
        return router

    def start(self) -> None:
        self._tasks = [self.loop.create_task(self._listen()),
                       self.loop.create_task(self._report())]

    async def _listen(self) -> None:
        while True:
            try:
                update = await self.membership.listen.remote(self.version, LISTEN_TIMEOUT_S,
                                                             self.source_id)
            except Exception as exc:  # the actor is restarting: keep the routers as they are
                log.warning("membership long-poll failed: %r", exc)
                await asyncio.sleep(LISTEN_RETRY_S)
                continue
            if update is not None:
                self.apply(*update)

    async def _report(self) -> None:
        sent: tuple[dict[DeploymentKey, float], dict[DeploymentKey, float]] = ({}, {})
        sent_at = 0.0
        while True:
            await asyncio.sleep(REPORT_PERIOD_S)
            loads = {k: r.load for k, r in self._routers.items() if r.load}
            queued = {k: float(r.num_queued) for k, r in self._routers.items() if r.num_queued}
            now = time.monotonic()
            if (loads, queued) != sent or (loads and now - sent_at > REPORT_HEARTBEAT_S):
                with contextlib.suppress(Exception):
                    await self.membership.report.remote(self.source_id, loads, queued)
                    sent, sent_at = (loads, queued), now


async def install_replica_view(membership: Any, source_id: str) -> ReplicaView:
    """Make handles inside this replica actor route through a `ReplicaView`."""
    view = ReplicaView(membership, source_id, asyncio.get_running_loop())
    update = await membership.listen.remote(-1, 0.0)
    if update is not None:
        view.apply(*update)
    view.start()
    install_handle_context(HandleContext(view.loop, view))
    return view
