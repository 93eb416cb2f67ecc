"""The controller: reconciles applications' desired state with running replicas."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llmserve.serve.asgi import bind_class_routes, install_error_handlers
from llmserve.serve.deployment import Application, replace_applications
from llmserve.serve.deployment_state import DeploymentState, DesiredDeployment
from llmserve.serve.exceptions import ConfigError, DeployFailedError, DeploymentUnavailableError
from llmserve.serve.handle import DeploymentHandle
from llmserve.serve.metrics import watch_controller
from llmserve.serve.router import Router
from llmserve.serve.runtime import (
    ControllerLink,
    DeploymentKey,
    DeploymentRoutes,
    ReplicaRef,
    Runtime,
)
from llmserve.serve.status import (
    ApplicationStatus,
    ApplicationStatusCode,
    DeploymentStatusCode,
    ServeStatus,
)

log = logging.getLogger("llmserve.serve")


@dataclass
class AppRecord:
    name: str
    route_prefix: str | None
    ingress: str
    deployments: list[str]


class Controller:
    def __init__(self, runtime: Runtime, clock: Callable[[], float] = time.monotonic,
                 period_s: float = 0.05) -> None:
        self.runtime = runtime
        self.clock = clock
        self.period_s = period_s
        self.apps: dict[str, AppRecord] = {}
        self.deployments: dict[tuple[str, str], DeploymentState] = {}
        self._waiter: asyncio.Future[None] | None = None  # the tick loop's wait, if waiting
        self._loop_task: asyncio.Task[None] | None = None
        self._bound_ingress: set[int] = set()
        self.route_table: list[tuple[str, str]] = []  # (prefix without trailing /, app)
        runtime.link(ControllerLink(self.deployment_routes, self._apply_remote_loads))
        watch_controller(lambda: self.deployments)

    # ---- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("controller tick failed")
            # until the period is over or wake(): a future and a timer, not wait_for's
            # task per tick (this runs 20 times a second)
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(self.period_s, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None

    def tick(self) -> None:
        for key, state in list(self.deployments.items()):
            state.autoscale()
            state.reconcile()
            if state.is_deleted:
                state.router.close(f"deployment {state.name!r} was deleted")
                del self.deployments[key]

    def wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)

    # ---- applications --------------------------------------------------------------
    async def deploy_app(self, app: Application, name: str, route_prefix: str | None) -> None:
        """Deploy (or update) an application and wait until it runs as asked."""
        self.apply_app(app, name, route_prefix)
        await self._wait_settled(name)

    def apply_app(self, app: Application, name: str, route_prefix: str | None) -> None:
        """Record an application's desired state; the following ticks realise it."""
        if route_prefix is not None and not route_prefix.startswith("/"):
            raise ConfigError(f"route_prefix must start with '/', got {route_prefix!r}")
        for other in self.apps.values():
            if other.name != name and route_prefix and other.route_prefix == route_prefix:
                raise ConfigError(f"route_prefix {route_prefix!r} is used by app {other.name!r}")
        nodes = app.walk()
        previous = self.apps.get(name)
        names = [node.deployment.name for node in nodes]
        self.apps[name] = AppRecord(name, route_prefix, app.deployment.name, names)
        self._update_route_table()
        for node in nodes:
            self._deploy(name, node)
        if previous is not None:
            for old in set(previous.deployments) - set(names):
                self.deployments[(name, old)].delete()
        self.wake()

    def _deploy(self, app_name: str, node: Application) -> None:
        dep = node.deployment
        to_handle = lambda child: DeploymentHandle(child.deployment.name, app_name)  # noqa: E731
        args = replace_applications(node.args, to_handle)
        kwargs = replace_applications(node.kwargs, to_handle)
        ingress_app = dep.ingress_app
        if ingress_app is not None and id(ingress_app) not in self._bound_ingress:
            bind_class_routes(ingress_app, dep.func_or_class)
            install_error_handlers(ingress_app)
            self._bound_ingress.add(id(ingress_app))
        desired = DesiredDeployment(dep.func_or_class, args, kwargs, dep.config,
                                    _version(dep.func_or_class, args, kwargs, dep.config),
                                    ingress_app)
        key = (app_name, dep.name)
        state = self.deployments.get(key)
        if state is None or state.deleting:
            self.deployments[key] = DeploymentState(app_name, dep.name, desired, self.runtime,
                                                    self.clock, self.wake)
        else:
            state.update(desired)

    def restore_app(self, app: Application, name: str, route_prefix: str | None,
                    adopted: dict[str, list[tuple[str, str, ReplicaRef]]],
                    targets: dict[str, int],
                    starting: dict[str, list[tuple[str, str, Awaitable[ReplicaRef]]]]
                    | None = None,
                    restart: dict[str, list[tuple[str, str]]] | None = None) -> None:
        """Re-create an application from a checkpoint, adopting its running replicas
        (``deployment -> [(replica_id, version, ref)]``) and those still starting
        (``deployment -> [(replica_id, version, started)]``), and starting again under
        the same ids those in ``restart``; reconcile starts only what is missing."""
        nodes = app.walk()
        names = [node.deployment.name for node in nodes]
        self.apps[name] = AppRecord(name, route_prefix, app.deployment.name, names)
        self._update_route_table()
        for node in nodes:
            self._deploy(name, node)
            dep = node.deployment.name
            self.deployments[(name, dep)].adopt(adopted.get(dep, []), targets.get(dep, 0),
                                                (starting or {}).get(dep, []),
                                                (restart or {}).get(dep, []))
        self.wake()

    async def _wait_settled(self, app_name: str) -> None:
        while True:
            record = self.apps.get(app_name)
            if record is None:
                raise DeploymentUnavailableError(f"application {app_name!r} was deleted")
            states = [self.deployments[(app_name, d)] for d in record.deployments]
            failed = [s for s in states if s.status_code() is DeploymentStatusCode.DEPLOY_FAILED]
            if failed:
                message = failed[0].last_error
                await self.delete_app(app_name)
                raise DeployFailedError(f"deploying {app_name!r} failed: {message}")
            if all(s.is_settled() for s in states):
                return
            await asyncio.sleep(0.01)

    async def delete_app(self, name: str, wait: bool = True) -> None:
        record = self.apps.pop(name, None)
        if record is None:
            return
        self._update_route_table()
        for dep in record.deployments:
            self.deployments[(name, dep)].delete()
        self.wake()
        while wait and any((name, d) in self.deployments for d in record.deployments):
            await asyncio.sleep(0.01)

    async def shutdown(self) -> None:
        for name in list(self.apps):
            await self.delete_app(name)
        if self._loop_task is not None:
            self._loop_task.cancel()
        await self.runtime.shutdown()

    # ---- lookups -------------------------------------------------------------------
    def router_for(self, app_name: str, deployment: str) -> Router:
        state = self.deployments.get((app_name, deployment))
        if state is None or state.deleting:
            raise DeploymentUnavailableError(
                f"deployment {deployment!r} of app {app_name!r} does not exist"
            )
        return state.router

    def ingress_of(self, app_name: str) -> str:
        record = self.apps.get(app_name)
        if record is None:
            raise DeploymentUnavailableError(f"application {app_name!r} does not exist")
        return record.ingress

    def deployment_routes(self) -> list[DeploymentRoutes]:
        """Every live deployment as routers in other processes must see it."""
        found = []
        for (app_name, name), state in self.deployments.items():
            if state.deleting:
                continue
            app = self.apps.get(app_name)
            is_ingress = app is not None and app.ingress == name
            cfg = state.desired.config
            found.append(DeploymentRoutes(
                app_name, name, cfg.max_ongoing_requests, cfg.max_queued_requests,
                dict(cfg.request_router_config), tuple(state.router.replica_ids),
                app.route_prefix if app is not None and is_ingress else None, is_ingress))
        return found

    def _apply_remote_loads(self, loads: Mapping[DeploymentKey, float]) -> None:
        for key, state in self.deployments.items():
            state.router.remote_ongoing = loads.get(key, 0.0)

    def routes(self) -> dict[str, str]:
        return {r.route_prefix: r.name for r in self.apps.values() if r.route_prefix}

    def _update_route_table(self) -> None:
        table = [(prefix.rstrip("/"), app) for prefix, app in self.routes().items()]
        self.route_table = sorted(table, key=lambda entry: len(entry[0]), reverse=True)

    async def fetch_status(self, http_url: str | None) -> ServeStatus:
        return self.serve_status(http_url)

    def serve_status(self, http_url: str | None) -> ServeStatus:
        apps = {name: self.app_status(name) for name in self.apps}
        return ServeStatus(self.runtime.name, http_url, apps)

    def app_status(self, name: str) -> ApplicationStatus:
        record = self.apps[name]
        deployments = {d: self.deployments[(name, d)].status() for d in record.deployments}
        overall = ApplicationStatusCode.of({s.status for s in deployments.values()})
        return ApplicationStatus(name, record.route_prefix, overall, record.ingress, deployments)


def _version(target: Any, args: Any, kwargs: Any, config: Any) -> str:
    """Same code object, arguments and replica-shaping options -> same version."""
    text = repr((id(target), getattr(target, "__qualname__", ""), args, sorted(kwargs.items()),
                 config.code_version_fields()))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
