"""A client of the detached controller: what the driver and every node proxy run.

`DetachedControlPlane` is what an HTTP proxy, handles and `serve.*` calls use instead of
an in-process `Controller`. Deploy, delete and status are calls to the controller
actor; routing needs no controller at all: like a replica, the plane follows the
membership actor by long-poll (`ReplicaView`), and the ingress deployments in the
snapshot give the route table. It also runs this process's own copy of every in-proxy
replica the snapshot lists (`ProxyReplicas`). So while the controller actor is down
(killed, being restarted) the proxy keeps routing to the replicas it knows.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

from llmserve.serve.exceptions import DeploymentUnavailableError
from llmserve.serve.ray.core_metrics import CoreFiguresFollower
from llmserve.serve.ray.in_proxy import InProxyReplica, ProxyReplicas
from llmserve.serve.ray.membership import DeploymentView, ReplicaView, Snapshot
from llmserve.serve.ray.node_info import ReplicaNodeInfo
from llmserve.serve.ray.proxy_config import ProxyConfig
from llmserve.serve.status import ServeStatus

DEPLOY_VISIBLE_TIMEOUT_S = 10.0


class DetachedControlPlane(ReplicaView):
    runtime_name = "ray"

    def __init__(self, actor: Any, membership: Any, started_ray: bool,
                 loop: asyncio.AbstractEventLoop, source_prefix: str = "driver") -> None:
        super().__init__(membership, f"{source_prefix}:{uuid.uuid4().hex[:8]}", loop)
        self.actor = actor
        self.started_ray = started_ray
        self.route_table: list[tuple[str, str]] = []
        self._routes: dict[str, str] = {}
        self._ingress: dict[str, str] = {}
        self.in_proxy = ProxyReplicas(self.refresh_local_replicas)
        self.core_figures = CoreFiguresFollower(membership)  # exported at /metrics

    @classmethod
    async def create(cls, actor: Any, membership: Any, started_ray: bool) -> DetachedControlPlane:
        plane = cls(actor, membership, started_ray, asyncio.get_running_loop())
        await plane.follow()
        return plane

    async def follow(self) -> None:
        """Apply the current snapshot, then follow the membership."""
        update = await self.membership.listen.remote(-1, 0.0)
        if update is not None:
            self.apply(*update)
        self.start()
        self._tasks.append(self.core_figures.start())

    # ---- routing from the membership snapshot --------------------------------------
    def apply(self, version: int, snapshot: Snapshot) -> None:
        self.in_proxy.sync({rid: (digest, spec) for view in snapshot.values()
                            for rid, digest, spec in view.in_proxy})
        super().apply(version, snapshot)
        ingress = {key: view for key, view in snapshot.items() if view.is_ingress}
        self._ingress = {app: dep for app, dep in ingress}
        self._routes = {view.route_prefix: key[0] for key, view in ingress.items()
                        if view.route_prefix}
        table = [(prefix.rstrip("/"), app) for prefix, app in self._routes.items()]
        self.route_table = sorted(table, key=lambda entry: len(entry[0]), reverse=True)

    def local_replicas(self, view: DeploymentView) -> list[Any]:
        return list(self.in_proxy.ready([rid for rid, _, _ in view.in_proxy]))

    def routes(self) -> dict[str, str]:
        return dict(self._routes)

    def ingress_of(self, app_name: str) -> str:
        dep = self._ingress.get(app_name)
        if dep is None:
            raise DeploymentUnavailableError(f"application {app_name!r} does not exist")
        return dep

    # ---- calls to the controller actor ---------------------------------------------
    async def deploy_app(self, app: Any, name: str, route_prefix: str | None) -> None:
        import ray

        pickler: Any = ray.cloudpickle
        version = await _unwrap(self.actor.deploy.remote(pickler.dumps(app), name,
                                                         route_prefix))
        deadline = self.loop.time() + DEPLOY_VISIBLE_TIMEOUT_S
        while not self._sees(version) and self.loop.time() < deadline:
            await asyncio.sleep(0.005)  # this proxy routes to the new replicas on return

    def _sees(self, version: int) -> bool:
        """This plane applied ``version`` and its in-proxy replicas have started."""
        if self.version < version:
            return False
        return all(len(self.local_replicas(view)) == len(view.in_proxy)
                   for view in self._views.values())

    async def configure_proxies(self, config: ProxyConfig) -> None:
        """Where the controller runs node proxies (it starts them in the background)."""
        await _unwrap(self.actor.configure_proxies.remote(config))

    async def delete_app(self, name: str, wait: bool = True) -> None:
        await _unwrap(self.actor.delete.remote(name, wait))

    async def fetch_status(self, http_url: str | None) -> ServeStatus:
        status: ServeStatus = await _unwrap(self.actor.status.remote())
        return replace(self._with_own_replicas(status), runtime=self.runtime_name,
                       http_url=http_url)

    def _with_own_replicas(self, status: ServeStatus) -> ServeStatus:
        """Status with this process as the node of the in-proxy replicas it runs."""
        apps = {}
        for app_name, app in status.applications.items():
            deployments = {}
            for dep_name, dep in app.deployments.items():
                replicas = []
                for r in dep.replicas:
                    own: InProxyReplica | None = self.in_proxy.get(r.replica_id)
                    if own is not None:
                        r = replace(r, node=own.node, num_ongoing_requests=own.num_ongoing)
                    replicas.append(r)
                deployments[dep_name] = replace(dep, replicas=replicas)
            apps[app_name] = replace(app, deployments=deployments)
        return replace(status, applications=apps)

    async def placements(self) -> dict[str, ReplicaNodeInfo]:
        """Where each replica actor runs (``replica_placements()``)."""
        result: dict[str, ReplicaNodeInfo] = await _unwrap(self.actor.placements.remote())
        return result

    async def close(self) -> None:
        """Stop following the membership and stop this process's in-proxy replicas."""
        for task in self._tasks:
            task.cancel()
        self.core_figures.figures = ()
        await self.in_proxy.shutdown()

    async def shutdown(self) -> None:
        """Stop every application and the detached actors (the cluster keeps nothing)."""
        import ray

        await self.close()
        try:
            await _unwrap(self.actor.shutdown.remote())
        finally:
            ray.kill(self.actor, no_restart=True)
            if self.started_ray:
                ray.shutdown()


async def _unwrap(object_ref: Any) -> Any:
    import ray

    try:
        return await object_ref
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, BaseException):
            raise exc.cause from None
        raise
