"""One deployment's desired state and the replicas that realise it.

`reconcile` compares the two and starts, rolls or drains replicas; `autoscale` and
`check_health` feed it. All timing uses the controller's injected clock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmserve.serve.autoscaling import (
    AutoscalingContext,
    MetricWindow,
    clamp,
    resolve_policy,
)
from llmserve.serve.config import DeploymentConfig
from llmserve.serve.router import Router
from llmserve.serve.runtime import ReplicaRef, ReplicaSpec, Runtime
from llmserve.serve.status import (
    DeploymentStatus,
    DeploymentStatusCode,
    ReplicaState,
    ReplicaStatus,
)
from routing import make_policy

log = logging.getLogger("llmserve.serve")
_ids = itertools.count(1)
MAX_START_FAILURES = 3


@dataclass
class ReplicaRecord:
    replica_id: str
    version: str
    state: ReplicaState = ReplicaState.STARTING
    ref: ReplicaRef | None = None
    next_health_check_s: float = 0.0
    health_task: asyncio.Task[None] | None = None


@dataclass
class DesiredDeployment:
    """What the user asked for in the latest deploy of this deployment."""

    func_or_class: Any
    init_args: tuple[Any, ...]
    init_kwargs: dict[str, Any]
    config: DeploymentConfig
    version: str
    ingress_app: Any = None


@dataclass
class DeploymentState:
    app_name: str
    name: str
    desired: DesiredDeployment
    runtime: Runtime
    clock: Callable[[], float]
    wake: Callable[[], None]
    router: Router = field(init=False)
    replicas: list[ReplicaRecord] = field(default_factory=list)
    target_replicas: int = 0
    start_failures: int = 0
    next_start_s: float = 0.0
    last_error: str = ""
    deleting: bool = False
    _autoscaling_state: Any = None
    _window: MetricWindow | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        cfg = self.desired.config
        router_cfg = dict(cfg.request_router_config)
        policy = make_policy(router_cfg.pop("policy", "power_of_two"), **router_cfg)
        self.router = Router(self.name, cfg.max_ongoing_requests, cfg.max_queued_requests,
                             policy)
        self.target_replicas = cfg.fixed_replicas

    # ---- desired state -------------------------------------------------------------
    def update(self, desired: DesiredDeployment) -> None:
        old = self.desired
        self.desired = desired
        self.router.max_ongoing = desired.config.max_ongoing_requests
        self.router.max_queued = desired.config.max_queued_requests
        if old.config.autoscaling != desired.config.autoscaling or (
            desired.config.autoscaling is None
        ):
            self.target_replicas = desired.config.fixed_replicas
            self._autoscaling_state = None
            self._window = None
        self.start_failures = 0
        if desired.version == old.version and desired.config.user_config != old.config.user_config:
            for record in self._live(ReplicaState.RUNNING):
                self._spawn(self._reconfigure(record, desired.config.user_config))
        self.wake()

    def adopt(self, replicas: list[tuple[str, str, ReplicaRef]], target_replicas: int,
              starting: Sequence[tuple[str, str, Awaitable[ReplicaRef]]] = (),
              restart: Sequence[tuple[str, str]] = ()) -> None:
        """Take over replicas a previous controller started (the detached controller
        after a restart) instead of starting new ones: running ones ``(replica_id,
        version, ref)``, and ones still starting ``(replica_id, version, started)``,
        which become RUNNING when ``started`` gives their ref. ``restart``: ``(replica_id,
        version)`` to start again under the same id (in-proxy replicas, which have no
        actor: the proxies keep their copies). An empty version means the deployment's
        current one."""
        for replica_id, version, ref in replicas:
            record = ReplicaRecord(replica_id, version or self.desired.version,
                                   ReplicaState.RUNNING, ref,
                                   self.clock() + self.desired.config.health_check_period_s)
            self.replicas.append(record)
            _skip_ids_past(replica_id)
        for replica_id, version, started in starting:
            record = ReplicaRecord(replica_id, version or self.desired.version)
            self.replicas.append(record)
            _skip_ids_past(replica_id)
            self._spawn(self._run_start(record, started))
        for replica_id, version in restart:
            record = ReplicaRecord(replica_id, version or self.desired.version)
            self.replicas.append(record)
            _skip_ids_past(replica_id)
            self._spawn(self._run_start(record, self.runtime.start_replica(self._spec(record))))
        if self.desired.config.autoscaling is not None:
            self.target_replicas = target_replicas
        self._sync_router()
        self.wake()

    def delete(self) -> None:
        self.deleting = True
        self.target_replicas = 0
        self.wake()

    @property
    def is_deleted(self) -> bool:
        return self.deleting and not self.replicas

    # ---- reconcile -----------------------------------------------------------------
    def reconcile(self) -> None:
        now = self.clock()
        version = self.desired.version
        current = [r for r in self._live() if r.version == version]
        old = [r for r in self._live() if r.version != version]
        for record in old:
            if record.state is ReplicaState.STARTING:
                self._stop(record)
        if self.start_failures < MAX_START_FAILURES and now >= self.next_start_s:
            for _ in range(self.target_replicas - len(current)):
                self._start()
        running_new = sum(1 for r in current if r.state is ReplicaState.RUNNING)
        old_running = [r for r in old if r.state is ReplicaState.RUNNING]
        keep_old = max(0, self.target_replicas - running_new) if not self.deleting else 0
        for record in sorted(old_running, key=self._ongoing)[: max(0, len(old_running) - keep_old)]:
            self._stop(record)
        excess = len(current) - self.target_replicas
        if excess > 0:
            by_cost = sorted(current, key=lambda r: (r.state is ReplicaState.RUNNING,
                                                      self._ongoing(r)))
            for record in by_cost[:excess]:
                self._stop(record)
        self._check_health(now)

    def autoscale(self) -> None:
        scaling = self.desired.config.autoscaling
        if scaling is None or self.deleting:
            return
        now = self.clock()
        if self._window is None:
            self._window = MetricWindow(scaling.look_back_period_s)
        self._window.add(now, self.router.load)
        ctx = AutoscalingContext(
            config=scaling,
            current_replicas=self.target_replicas,
            running_replicas=len(self._live(ReplicaState.RUNNING)),
            total_ongoing_requests=self._window.mean(),
            total_queued_requests=self.router.num_queued,
            now_s=now,
        )
        replicas, self._autoscaling_state = resolve_policy(scaling.policy)(
            ctx, self._autoscaling_state
        )
        replicas = clamp(scaling, int(replicas))
        if replicas != self.target_replicas:
            log.info("autoscaling %s/%s: %d -> %d replicas (ongoing %.1f)", self.app_name,
                     self.name, self.target_replicas, replicas, ctx.total_ongoing_requests)
            self.target_replicas = replicas

    # ---- status --------------------------------------------------------------------
    def status(self) -> DeploymentStatus:
        replicas = [
            ReplicaStatus(r.replica_id, r.state, r.version, self._ongoing(r),
                          r.ref.node if r.ref is not None else None)
            for r in self.replicas
        ]
        return DeploymentStatus(self.name, self.status_code(), self.last_error,
                                self.target_replicas, self.router.num_queued, replicas)

    def status_code(self) -> DeploymentStatusCode:
        if self.start_failures >= MAX_START_FAILURES:
            return DeploymentStatusCode.DEPLOY_FAILED
        if self.is_settled():
            return DeploymentStatusCode.HEALTHY
        if any(r.state is ReplicaState.UNHEALTHY for r in self.replicas):
            return DeploymentStatusCode.UNHEALTHY
        return DeploymentStatusCode.UPDATING

    def is_settled(self) -> bool:
        """The deployed version runs at its target and nothing else is left."""
        version = self.desired.version
        running = [r for r in self.replicas if r.state is ReplicaState.RUNNING]
        return (len(running) == len(self.replicas) == self.target_replicas
                and all(r.version == version for r in running))

    # ---- replica lifecycle ---------------------------------------------------------
    def _live(self, *states: ReplicaState) -> list[ReplicaRecord]:
        wanted = states or (ReplicaState.STARTING, ReplicaState.RUNNING)
        return [r for r in self.replicas if r.state in wanted]

    def _ongoing(self, record: ReplicaRecord) -> int:
        return record.ref.num_ongoing if record.ref is not None else 0

    def _start(self) -> None:
        record = ReplicaRecord(f"{self.name}#{next(_ids)}", self.desired.version)
        self.replicas.append(record)
        self._spawn(self._run_start(record, self.runtime.start_replica(self._spec(record))))

    def _spec(self, record: ReplicaRecord) -> ReplicaSpec:
        desired = self.desired
        return ReplicaSpec(record.replica_id, self.app_name, self.name, desired.func_or_class,
                           desired.init_args, desired.init_kwargs, desired.config,
                           record.version, desired.ingress_app)

    async def _run_start(self, record: ReplicaRecord, started: Awaitable[ReplicaRef]) -> None:
        try:
            ref = await started
        except Exception as exc:
            self.replicas.remove(record)
            self.start_failures += 1
            self.next_start_s = self.clock() + min(30.0, 0.1 * 2**self.start_failures)
            self.last_error = (f"replica {record.replica_id} failed to start: {exc!r}\n"
                               + traceback.format_exc())
            log.error("%s", self.last_error)
            self.wake()
            return
        record.ref = ref
        self.start_failures = 0
        if record.state is ReplicaState.STOPPING:
            await self._drain_and_stop(record)
            return
        record.state = ReplicaState.RUNNING
        record.next_health_check_s = self.clock() + self.desired.config.health_check_period_s
        self._sync_router()
        self.wake()

    def _stop(self, record: ReplicaRecord) -> None:
        was_starting = record.state is ReplicaState.STARTING
        record.state = ReplicaState.STOPPING
        self._sync_router()
        if not was_starting:
            self._spawn(self._drain_and_stop(record))

    async def _drain_and_stop(self, record: ReplicaRecord) -> None:
        ref = record.ref
        assert ref is not None
        timeout_s = self.desired.config.graceful_shutdown_timeout_s
        deadline = self.clock() + timeout_s
        while ref.num_ongoing > 0 and self.clock() < deadline:
            await asyncio.sleep(0.01)
        try:
            await asyncio.wait_for(self.runtime.stop_replica(ref), timeout=max(timeout_s, 1.0))
        except Exception as exc:
            log.warning("replica %s did not stop cleanly: %r", record.replica_id, exc)
            await self.runtime.kill_replica(ref, f"shutdown hook failed: {exc!r}")
        self._forget(record)

    def _forget(self, record: ReplicaRecord) -> None:
        if record in self.replicas:
            self.replicas.remove(record)
        self.wake()

    def _check_health(self, now: float) -> None:
        cfg = self.desired.config
        for record in self._live(ReplicaState.RUNNING):
            ref = record.ref
            assert ref is not None
            if not ref.is_alive:
                self._spawn(self._replace(record, "replica process died"))
            elif now >= record.next_health_check_s and record.health_task is None:
                record.next_health_check_s = now + cfg.health_check_period_s
                record.health_task = self._spawn(self._health(record, cfg.health_check_timeout_s))

    async def _health(self, record: ReplicaRecord, timeout_s: float) -> None:
        assert record.ref is not None
        try:
            await asyncio.wait_for(record.ref.check_health(), timeout_s)
        except Exception as exc:
            await self._replace(record, f"health check failed: {exc!r}")
        finally:
            record.health_task = None

    async def _replace(self, record: ReplicaRecord, reason: str) -> None:
        if record.state is not ReplicaState.RUNNING:
            return
        log.warning("replacing replica %s: %s", record.replica_id, reason)
        record.state = ReplicaState.UNHEALTHY
        self.last_error = f"replica {record.replica_id}: {reason}"
        self._sync_router()
        assert record.ref is not None
        await self.runtime.kill_replica(record.ref, reason)
        self._forget(record)

    async def _reconfigure(self, record: ReplicaRecord, user_config: Any) -> None:
        assert record.ref is not None
        try:
            await record.ref.reconfigure(user_config)
        except Exception as exc:
            await self._replace(record, f"reconfigure failed: {exc!r}")

    def _sync_router(self) -> None:
        running = [r.ref for r in self.replicas
                   if r.state is ReplicaState.RUNNING and r.ref is not None]
        self.router.set_replicas(running)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _skip_ids_past(replica_id: str) -> None:
    """New replica ids must not repeat an adopted one's ``<deployment>#<n>``."""
    global _ids
    number = replica_id.rpartition("#")[2]
    if number.isdigit():
        upcoming = next(_ids)
        _ids = itertools.count(max(upcoming, int(number) + 1))
