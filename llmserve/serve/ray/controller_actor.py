"""The detached controller: a named Ray actor that outlives the driver and its own death.

`ControllerActor` runs the same `Controller` as the local runtime over a `RayRuntime`, on
an event loop thread of its own, with detached named replica and membership actors, and
owns the node proxies (`ray/proxy_actor.py`). Every change of applications or replicas
is checkpointed to Ray's GCS key-value store (a replica as STARTING before its actor is
created); when the actor is killed, Ray restarts it (``max_restarts=-1``), and
``__init__`` reads the checkpoint back and re-adopts the replica actors that still run or
are still starting instead of starting new ones (`RayRuntime.adopt_replica`). Replica
actors missing from the checkpoint are killed as orphans and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import threading
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llmserve.serve.controller import Controller
from llmserve.serve.ray.core_metrics import send_core_figures
from llmserve.serve.ray.names import NAMESPACE
from llmserve.serve.ray.node_info import ReplicaNodeInfo
from llmserve.serve.ray.proxy_actor import reconcile_node_proxies, stop_node_proxies
from llmserve.serve.ray.proxy_config import ProxyConfig
from llmserve.serve.ray.runtime import RayRuntime
from llmserve.serve.runtime import ReplicaRef
from llmserve.serve.status import ReplicaState, ServeStatus

log = logging.getLogger("llmserve.serve")
T = TypeVar("T")
CHECKPOINT_KEY = b"llmserve:checkpoint"
PROXIES_KEY = b"llmserve:proxies"
PROXY_CHECK_PERIOD_S = 2.0  # how often the node list is compared with the node proxies
CHECKPOINT_PERIOD_S = 0.1
ADOPT_DRAIN_S = 2.0
CURRENT = ""  # a checkpointed replica version meaning "the deployment's current version"


@dataclass(frozen=True)
class AppCheckpoint:
    name: str
    route_prefix: str | None
    app_bytes: bytes  # the Application as the driver cloudpickled it
    # per deployment: (replica id, version, still starting), STARTING ones recorded
    # before their actor is created
    replicas: dict[str, list[tuple[str, str, bool]]] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)  # autoscaled replica counts


def save_proxy_config(config: ProxyConfig | None) -> None:
    from ray.experimental import internal_kv

    if config is None:
        internal_kv._internal_kv_del(PROXIES_KEY, namespace=NAMESPACE)
    else:
        internal_kv._internal_kv_put(PROXIES_KEY, pickle.dumps(config), overwrite=True,
                                     namespace=NAMESPACE)


def load_proxy_config() -> ProxyConfig | None:
    from ray.experimental import internal_kv

    data = internal_kv._internal_kv_get(PROXIES_KEY, namespace=NAMESPACE)
    return None if not data else pickle.loads(data)  # type: ignore[no-any-return]


def save_checkpoint(data: bytes) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(CHECKPOINT_KEY, data, overwrite=True, namespace=NAMESPACE)


def load_checkpoint() -> dict[str, AppCheckpoint]:
    from ray.experimental import internal_kv

    data = internal_kv._internal_kv_get(CHECKPOINT_KEY, namespace=NAMESPACE)
    return {} if not data else dict(pickle.loads(data))


def clear_checkpoint() -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(CHECKPOINT_KEY, namespace=NAMESPACE)


class ControllerActor:
    """Wrapped by ``ray.remote`` (detached, named, restartable). Only plain methods, so
    Ray runs it as a threaded actor; they wait on the controller's own event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="llmserve-controller")
        self._thread.start()
        self.core = CheckpointedController(RayRuntime())
        self._submit(self.core.start())

    def _submit(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def ping(self) -> int:
        """This actor's pid (a restart changes it)."""
        return os.getpid()

    def deploy(self, app_bytes: bytes, name: str, route_prefix: str | None) -> int:
        """Deploy (or update) an application; the membership version that has it."""
        return self._submit(self.core.deploy(app_bytes, name, route_prefix))

    def delete(self, name: str, wait: bool = True) -> None:
        self._submit(self.core.delete(name, wait))

    def status(self) -> ServeStatus:
        return self._submit(self.core.controller.fetch_status(None))

    def configure_proxies(self, config: ProxyConfig) -> None:
        """Run node proxies as ``config`` says (started in the background)."""
        self._submit(self.core.configure_proxies(config))

    def placements(self) -> dict[str, ReplicaNodeInfo]:
        async def read() -> dict[str, ReplicaNodeInfo]:
            return self.core.runtime.placements()

        return self._submit(read())

    def shutdown(self) -> None:
        """Delete every application, stop the replicas and forget the checkpoint."""
        self._submit(self.core.shutdown())


class CheckpointedController:
    """A `Controller` on a detached `RayRuntime` whose state is checkpointed to the GCS."""

    def __init__(self, runtime: RayRuntime) -> None:
        self.runtime = runtime
        self.controller = Controller(runtime)  # links itself to the runtime
        self._app_bytes: dict[str, bytes] = {}
        self._saved: bytes | None = None
        self._save_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._proxy_task: asyncio.Task[None] | None = None
        self._figures_task: asyncio.Task[None] | None = None
        self.proxy_config: ProxyConfig | None = None
        runtime.before_start = self._save  # a starting replica is checkpointed first

    async def start(self) -> None:
        await self._recover(await asyncio.to_thread(load_checkpoint))
        self.runtime.start_publishing()
        self.controller.start()
        self._task = asyncio.get_running_loop().create_task(self._checkpoint_loop())
        self.proxy_config = await asyncio.to_thread(load_proxy_config)
        self._proxy_task = asyncio.get_running_loop().create_task(self._proxy_loop())
        self._figures_task = asyncio.get_running_loop().create_task(
            send_core_figures(lambda: self.controller.deployments, self.runtime.membership))

    async def configure_proxies(self, config: ProxyConfig) -> None:
        if config != self.proxy_config:
            await asyncio.to_thread(save_proxy_config, config)
            self.proxy_config = config
        await asyncio.to_thread(reconcile_node_proxies, config)

    async def _proxy_loop(self) -> None:
        """Follow the node list: proxies for nodes that join, none for nodes that die."""
        while True:
            await asyncio.sleep(PROXY_CHECK_PERIOD_S)
            if self.proxy_config is None:
                continue
            try:
                await asyncio.to_thread(reconcile_node_proxies, self.proxy_config)
            except Exception:
                log.exception("reconciling the node proxies failed")

    async def deploy(self, app_bytes: bytes, name: str, route_prefix: str | None) -> int:
        import ray

        app = ray.cloudpickle.loads(app_bytes)
        self._app_bytes[name] = app_bytes  # checkpointed once the controller has the app
        await self.controller.deploy_app(app, name, route_prefix)
        version = await self.runtime.flush()
        await self._save()
        return version

    async def delete(self, name: str, wait: bool) -> None:
        await self.controller.delete_app(name, wait)
        self._app_bytes.pop(name, None)
        await self._save()

    async def shutdown(self) -> None:
        for task in (self._task, self._proxy_task, self._figures_task):
            if task is not None:
                task.cancel()
        self.proxy_config = None
        await asyncio.to_thread(stop_node_proxies)
        self._app_bytes.clear()
        await self.controller.shutdown()
        await asyncio.to_thread(clear_checkpoint)
        await asyncio.to_thread(save_proxy_config, None)

    # ---- checkpoint ----------------------------------------------------------------
    def _checkpoint(self) -> dict[str, AppCheckpoint]:
        out: dict[str, AppCheckpoint] = {}
        for name, record in self.controller.apps.items():
            if name not in self._app_bytes:
                continue
            replicas: dict[str, list[tuple[str, str, bool]]] = {}
            targets: dict[str, int] = {}
            for dep in record.deployments:
                state = self.controller.deployments[(name, dep)]
                targets[dep] = state.target_replicas
                replicas[dep] = [
                    (r.replica_id, CURRENT if r.version == state.desired.version else r.version,
                     r.state is ReplicaState.STARTING)
                    for r in state.replicas
                    if r.state in (ReplicaState.RUNNING, ReplicaState.STARTING)]
            out[name] = AppCheckpoint(name, record.route_prefix, self._app_bytes[name],
                                      replicas, targets)
        return out

    async def _save(self) -> None:
        async with self._save_lock:  # writes land in the order their states were read
            data = pickle.dumps(self._checkpoint())
            if data != self._saved:
                await asyncio.to_thread(save_checkpoint, data)
                self._saved = data

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_PERIOD_S)
            try:
                await self._save()
            except Exception:
                log.exception("checkpointing the controller's state failed")

    async def _recover(self, checkpoint: dict[str, AppCheckpoint]) -> None:
        import ray

        for app in checkpoint.values():
            application = ray.cloudpickle.loads(app.app_bytes)
            in_proxy = {node.deployment.name for node in application.walk()
                        if node.deployment.config.ray_actor_options.get("in_proxy")}
            running: dict[str, list[tuple[str, str, Any]]] = {}
            starting: dict[str, list[tuple[str, str, Awaitable[ReplicaRef]]]] = {}
            restart: dict[str, list[tuple[str, str]]] = {}
            for dep, replicas in app.replicas.items():
                for rid, version, is_starting in replicas:
                    if dep in in_proxy:  # no actor: recorded again, the proxies keep theirs
                        restart.setdefault(dep, []).append((rid, version))
                        continue
                    actor = self.runtime.find_replica_actor(app.name, rid)
                    if actor is None:  # gone, or its controller died before creating it
                        continue
                    if is_starting:  # becomes RUNNING when its start (under way) ends
                        starting.setdefault(dep, []).append((rid, version, _adopt_started(
                            self.runtime, rid, actor)))
                    else:
                        running.setdefault(dep, []).append((rid, version, actor))
            adopted: dict[str, list[tuple[str, str, ReplicaRef]]] = {}
            for dep, entries in running.items():
                refs = await asyncio.gather(*(
                    self.runtime.adopt_replica(rid, actor, ADOPT_DRAIN_S)
                    for rid, _, actor in entries), return_exceptions=True)
                adopted[dep] = []
                for (rid, version, _), ref in zip(entries, refs, strict=True):
                    if isinstance(ref, BaseException):
                        log.warning("cannot adopt replica %s: %r", rid, ref)
                    else:
                        adopted[dep].append((rid, version, ref))
            self._app_bytes[app.name] = app.app_bytes
            self.controller.restore_app(application, app.name, app.route_prefix, adopted,
                                        app.targets, starting, restart)
            log.info("recovered application %s: adopted %s, still starting %s", app.name,
                     {d: [r[0] for r in rs] for d, rs in adopted.items()},
                     {d: [r[0] for r in rs] for d, rs in starting.items()})
        with contextlib.suppress(Exception):
            for name in self.runtime.kill_orphans():
                log.warning("killed orphan replica actor %s", name)


async def _adopt_started(runtime: RayRuntime, replica_id: str, actor: Any) -> ReplicaRef:
    return await runtime.adopt_replica(replica_id, actor, ADOPT_DRAIN_S, timeout_s=None)
