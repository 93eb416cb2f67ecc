"""The Ray runtime: each replica is a Ray actor, placed with Ray resources.

`RayRuntime` implements the runtime seam (`start_replica`, `stop_replica`, `kill_replica`,
`shutdown`, `link`) for the controller, which runs in a detached actor of its own
(`ray/controller_actor.py`). Replicas run `LocalReplica` inside an async actor
(`ray/replica_actor.py`), detached and named so they outlive the controller, placed from
the deployment's ``ray_actor_options`` (``num_cpus``, ``num_gpus`` incl. fractions,
``memory``, ``resources``, ``accelerator_type``, ``runtime_env``) and, when
``placement_group_bundles`` is given, in bundle 0 of a placement group of its own.
Everything that routes (replicas' handles, the driver, node proxies) follows a membership
snapshot the runtime publishes (`ray/membership.py`). A deployment with
``ray_actor_options={"in_proxy": True}`` (the OpenAI ingress by default) gets no actor:
the runtime records it (`InProxyRecord`) and every HTTP proxy runs its own copy from the
spec in the snapshot (`ray/in_proxy.py`). ``import ray`` happens only when this runtime
is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from llmserve.serve.ray.in_proxy import InProxyRecord
from llmserve.serve.ray.membership import (
    DeploymentView,
    MembershipActor,
    ReplicaEntry,
    Snapshot,
    snapshot_key,
)
from llmserve.serve.ray.names import (
    MEMBERSHIP_NAME,
    NAMESPACE,
    REPLICA_NAME_PREFIX,
    replica_actor_name,
)
from llmserve.serve.ray.node_info import ReplicaNodeInfo
from llmserve.serve.ray.placement import replica_placement
from llmserve.serve.ray.refs import RayReplicaRef
from llmserve.serve.ray.replica_actor import ReplicaActor
from llmserve.serve.runtime import ControllerLink, ReplicaRef, ReplicaSpec

log = logging.getLogger("llmserve.serve")
PUBLISH_PERIOD_S = 0.05
LOADS_PERIOD_S = 0.1
PENDING_WARNING_S = 30.0
KILL_HOOK_TIMEOUT_S = 10.0
FLUSH_TIMEOUT_S = 2.0
ADOPT_TIMEOUT_S = 10.0


class RayRuntime:
    name = "ray"

    def __init__(self) -> None:
        """In a process that has joined Ray (the controller actor). The membership actor
        is detached, named and restartable (the controller republishes to a restarted
        one); an existing one is reused."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        self._actor_class: Any = ray.remote(ReplicaActor)
        self._membership: Any = ray.remote(MembershipActor).options(
            name=MEMBERSHIP_NAME, namespace=NAMESPACE, lifetime="detached",
            get_if_exists=True, max_restarts=-1, num_cpus=0, max_concurrency=10_000,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
        ).remote()
        self._refs: dict[str, RayReplicaRef] = {}
        self._in_proxy: dict[str, InProxyRecord] = {}  # they run in each proxy
        self._drain_s: dict[str, float] = {}
        self._names: dict[str, str] = {}  # replica id -> actor name
        self._controller: ControllerLink | None = None
        self._publisher: asyncio.Task[None] | None = None
        # Versions only grow, across restarts of the controller and of the membership
        # actor: a controller starts past both the membership's version and the clock
        # in ms (at most one publish per PUBLISH_PERIOD_S came before).
        membership: Any = self._membership
        self._version = max(int(ray.get(membership.current_version.remote())),
                            int(time.time() * 1000))
        self._published: tuple[Any, ...] | None = None
        self._may_publish = False  # until `start_publishing`: recovery comes first
        # awaited before a replica's actor (or placement group) is created: the
        # controller checkpoints the STARTING replica's id first
        self.before_start: Callable[[], Awaitable[None]] | None = None

    @property
    def membership(self) -> Any:
        """The membership actor (its handle) the runtime publishes to."""
        return self._membership

    def link(self, controller: ControllerLink) -> None:
        """The controller whose deployments the runtime publishes to replicas."""
        self._controller = controller

    # ---- the runtime seam ----------------------------------------------------------
    async def start_replica(self, spec: ReplicaSpec) -> ReplicaRef:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        placement = replica_placement(spec.config.ray_actor_options)
        self._ensure_publisher()
        if placement.in_proxy:
            # The controller runs away from every proxy: it records the replica, and each
            # proxy runs its own copy from the spec in the snapshot.
            log.info("replica %s runs in every HTTP proxy's process", spec.replica_id)
            record = InProxyRecord(spec)
            self._in_proxy[spec.replica_id] = record
            return record
        await self._publish()  # the replica's handles must know every deployment
        if self.before_start is not None:
            await self.before_start()
        options: dict[str, Any] = dict(placement.actor_options)
        lifetime: dict[str, Any] = {"lifetime": "detached"}
        options.update(name=replica_actor_name(spec.app_name, spec.replica_id),
                       namespace=NAMESPACE, **lifetime)
        pg = None
        if placement.uses_placement_group:
            pg = placement_group(placement.bundles, strategy=placement.strategy,
                                 name=f"llmserve:{spec.replica_id}", **lifetime)
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)
        actor = None
        try:
            if pg is not None:
                await _wait_pending(pg.ready(), f"placement group {placement.bundles} "
                                    f"({placement.strategy}) for {spec.replica_id}")
            actor = self._actor_class.options(max_restarts=0, **options).remote(
                spec, self._membership)
            info: ReplicaNodeInfo = await _wait_pending(
                actor.start.remote(), f"actor for {spec.replica_id} ({options})")
        except BaseException as exc:
            if actor is not None:
                ray.kill(actor)
            if pg is not None:
                remove_placement_group(pg)
            if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(
                    exc.cause, BaseException):
                raise exc.cause from None
            raise
        ref = RayReplicaRef(spec.replica_id, actor, info, pg)
        ref.start_watch()
        self._refs[spec.replica_id] = ref
        self._drain_s[spec.replica_id] = min(2.0, spec.config.graceful_shutdown_timeout_s)
        self._names[spec.replica_id] = replica_actor_name(spec.app_name, spec.replica_id)
        log.info("replica %s runs on node %s (%s) with %s", spec.replica_id, info.node_id[:8],
                 info.node_ip, info.resources)
        return ref

    def find_replica_actor(self, app_name: str, replica_id: str) -> Any | None:
        """The detached actor of a replica a previous controller started or was starting
        (claimed: `kill_orphans` spares it); None when there is none (its placement
        group, if one was made, is removed)."""
        import ray

        name = replica_actor_name(app_name, replica_id)
        try:
            actor = ray.get_actor(name, NAMESPACE)
        except ValueError:
            _remove_placement_group_named(f"llmserve:{replica_id}")
            return None
        self._names[replica_id] = name
        return actor

    async def adopt_replica(self, replica_id: str, actor: Any, drain_s: float,
                            timeout_s: float | None = ADOPT_TIMEOUT_S) -> RayReplicaRef:
        """A replica actor a previous controller started, as a ref. Its ``start`` is
        idempotent: a running one answers at once, one still starting when it finishes
        (``timeout_s=None`` waits as long as a new start would). Raises what its start
        raised, or when it is gone (then it is killed and its placement group removed)."""
        import ray
        from ray.util import get_placement_group

        try:
            call = actor.start.remote()
            info: ReplicaNodeInfo = await (
                _wait_pending(call, f"replica {replica_id} that was starting")
                if timeout_s is None else asyncio.wait_for(call, timeout_s))
        except BaseException as exc:
            self._names.pop(replica_id, None)
            with contextlib.suppress(Exception):
                ray.kill(actor)
            _remove_placement_group_named(f"llmserve:{replica_id}")
            if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(
                    exc.cause, BaseException):
                raise exc.cause from None
            raise
        pg = None
        if info.placement_group_id is not None:
            with contextlib.suppress(Exception):
                pg = get_placement_group(f"llmserve:{replica_id}")
        ref = RayReplicaRef(replica_id, actor, info, pg)
        ref.start_watch()
        self._refs[replica_id] = ref
        self._drain_s[replica_id] = drain_s
        log.info("adopted replica %s on node %s (pid %d)", replica_id, info.node_id[:8],
                 info.pid)
        return ref

    def kill_orphans(self) -> list[str]:
        """Kill detached replica actors this runtime neither started nor adopted (a
        previous controller started them after its last checkpoint)."""
        import ray
        from ray.util import list_named_actors

        killed = []
        owned = set(self._names.values())
        for entry in list_named_actors(all_namespaces=True):
            name, namespace = entry["name"], entry["namespace"]  # type: ignore[index]
            if (namespace != NAMESPACE or not name.startswith(REPLICA_NAME_PREFIX)
                    or name in owned):
                continue
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(name, NAMESPACE))
                killed.append(name)
        return killed

    async def stop_replica(self, ref: ReplicaRef) -> None:
        if isinstance(ref, InProxyRecord):  # the proxies stop their copies
            ref.mark_dead()
            self._in_proxy.pop(ref.replica_id, None)
            return
        assert isinstance(ref, RayReplicaRef)
        try:
            if ref.is_alive:
                drain_s = self._drain_s.get(ref.replica_id, 0.0)
                await _call_alive(ref.actor.shutdown.remote(drain_s))
        finally:
            ref.mark_dead("replica stopped")
            self._release(ref)

    async def kill_replica(self, ref: ReplicaRef, reason: str) -> None:
        """Fail its requests at once; still run its shutdown hook when the actor lives."""
        if isinstance(ref, InProxyRecord):
            await self.stop_replica(ref)
            return
        assert isinstance(ref, RayReplicaRef)
        was_alive = ref.is_alive
        ref.mark_dead(reason)
        try:
            if was_alive:
                await asyncio.wait_for(_call_alive(ref.actor.kill.remote(reason)),
                                       KILL_HOOK_TIMEOUT_S)
        except Exception as exc:
            log.warning("shutdown hook of killed replica %s failed: %r", ref.replica_id, exc)
        finally:
            self._release(ref)

    async def shutdown(self) -> None:
        import ray

        if self._publisher is not None:
            self._publisher.cancel()
        for ref in list(self._refs.values()):
            await self.kill_replica(ref, "serve shut down")
        with contextlib.suppress(Exception):
            ray.kill(self._membership)

    async def flush(self) -> int:
        """Publish membership now and wait (bounded) until every replica applied it, so
        handles inside replicas see what `serve.run` just deployed; the version."""
        await self._publish()
        await self._membership.wait_applied.remote(self._version, FLUSH_TIMEOUT_S)
        return self._version

    # ---- status --------------------------------------------------------------------
    def placements(self) -> dict[str, ReplicaNodeInfo]:
        """Where each running replica is: node id and IP, pid, GPU ids, resources."""
        return {rid: ref.info for rid, ref in self._refs.items() if ref.info is not None}

    # ---- membership ----------------------------------------------------------------
    def start_publishing(self) -> None:
        """Publish membership from now on (a recovering controller calls it once it has
        restored its applications, so no listener sees a partial snapshot)."""
        self._may_publish = True
        self._ensure_publisher()

    def _ensure_publisher(self) -> None:
        if not self._may_publish:
            return
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.get_running_loop().create_task(self._publish_loop())

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_loads = 0.0
        while True:
            try:
                await self._publish()
                if loop.time() >= next_loads:
                    next_loads = loop.time() + LOADS_PERIOD_S
                    version, loads = await self._membership.poll.remote()
                    self._apply_loads(loads)
                    if version != self._version and self._published is not None:
                        await self._republish(version)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("publishing replica membership failed")
            await asyncio.sleep(PUBLISH_PERIOD_S)

    async def _republish(self, seen_version: int) -> None:
        """The membership actor was restarted (it lost its snapshot): publish the whole
        snapshot again, at a version past every one listeners know."""
        if await self._membership.current_version.remote() == self._version:
            return  # a publish of ours was in flight when it was polled
        log.warning("the membership actor restarted (version %d, ours %d): republishing",
                    seen_version, self._version)
        self._published = None
        await self._publish()

    async def _publish(self) -> None:
        if not self._may_publish:
            return
        snapshot = self._snapshot()
        key = snapshot_key(snapshot)
        if key == self._published:
            return
        self._version += 1
        await self._membership.publish.remote(self._version, snapshot)
        self._published = key

    def _snapshot(self) -> Snapshot:
        snapshot: Snapshot = {}
        if self._controller is None:
            return snapshot
        for routes in self._controller.routes():
            entries = []
            in_proxy = []
            for rid in routes.replica_ids:
                ref = self._refs.get(rid)
                if ref is not None and ref.is_alive:
                    entries.append(ReplicaEntry(rid, ref.actor, ref.multiplexed_model_ids))
                record = self._in_proxy.get(rid)
                if record is not None:
                    in_proxy.append((rid, record.digest, record.spec_bytes))
            snapshot[(routes.app_name, routes.deployment_name)] = DeploymentView(
                routes.max_ongoing, routes.max_queued, dict(routes.router_config),
                tuple(entries), routes.route_prefix, routes.is_ingress, tuple(in_proxy))
        return snapshot

    def _apply_loads(self, loads: dict[tuple[str, str], float]) -> None:
        """Load that replicas' own handles put on each deployment, for its autoscaler."""
        if self._controller is not None:
            self._controller.report_remote_loads(loads)

    def _release(self, ref: RayReplicaRef) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        ref.stop_watch()
        self._refs.pop(ref.replica_id, None)
        self._drain_s.pop(ref.replica_id, None)
        self._names.pop(ref.replica_id, None)
        with contextlib.suppress(Exception):
            ray.kill(ref.actor)
        if ref.placement_group is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(ref.placement_group)


async def _wait_pending(object_ref: Any, what: str) -> Any:
    """Await a Ray object, warning while the cluster has no room for it yet."""
    future = asyncio.ensure_future(object_ref)
    waited_s = 0.0
    while True:
        done, _ = await asyncio.wait({future}, timeout=PENDING_WARNING_S)
        if done:
            return future.result()
        waited_s += PENDING_WARNING_S
        log.warning("still waiting after %.0f s for the cluster to place the %s",
                    waited_s, what)


def _remove_placement_group_named(name: str) -> None:
    from ray.util import get_placement_group
    from ray.util.placement_group import remove_placement_group

    with contextlib.suppress(Exception):
        remove_placement_group(get_placement_group(name))


async def _call_alive(object_ref: Any) -> None:
    """Await a control call; an actor that is already gone counts as done."""
    import ray

    try:
        await object_ref
    except ray.exceptions.RayActorError:
        return
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, BaseException):
            raise exc.cause from None
        raise
