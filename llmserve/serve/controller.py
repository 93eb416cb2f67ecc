"""The controller: reconciles applications' desired state with running replicas."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from llmserve.serve.asgi import bind_class_routes
from llmserve.serve.deployment import Application, replace_applications
from llmserve.serve.deployment_state import DeploymentState, DesiredDeployment
from llmserve.serve.exceptions import ConfigError, DeployFailedError, DeploymentUnavailableError
from llmserve.serve.handle import DeploymentHandle
from llmserve.serve.metrics import watch_controller
from llmserve.serve.router import Router
from llmserve.serve.runtime import ReplicaRef, Runtime
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
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._bound_ingress: set[int] = set()
        self.route_table: list[tuple[str, str]] = []  # (prefix without trailing /, app)
        watch_controller(lambda: self.deployments)

    # ---- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("controller tick failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.period_s)

    def tick(self) -> None:
        for key, state in list(self.deployments.items()):
            state.autoscale()
            state.reconcile()
            if state.is_deleted:
                state.router.close(f"deployment {state.name!r} was deleted")
                del self.deployments[key]

    def wake(self) -> None:
        self._wake.set()

    # ---- applications --------------------------------------------------------------
    async def deploy_app(self, app: Application, name: str, route_prefix: str | None) -> None:
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
        await self._wait_settled(name)

    def _deploy(self, app_name: str, node: Application) -> None:
        dep = node.deployment
        to_handle = lambda child: DeploymentHandle(child.deployment.name, app_name)  # noqa: E731
        args = replace_applications(node.args, to_handle)
        kwargs = replace_applications(node.kwargs, to_handle)
        ingress_app = dep.ingress_app
        if ingress_app is not None and id(ingress_app) not in self._bound_ingress:
            bind_class_routes(ingress_app, dep.func_or_class)
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
