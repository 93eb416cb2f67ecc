"""The driver's side of ``runtime="ray-detached"``: a client of the detached controller.

`DetachedControlPlane` is what the driver's HTTP proxy, handles and `serve.*` calls use
instead of an in-process `Controller`. Deploy, delete and status are calls to the
controller actor; routing needs no controller at all: like a replica, the driver follows
the membership actor by long-poll (`ReplicaView`), and the ingress deployments in the
snapshot give the route table. So while the controller actor is down (killed, being
restarted) the proxy keeps routing to the replicas it knows.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

from llmserve.serve.exceptions import DeploymentUnavailableError
from llmserve.serve.ray.controller_actor import CONTROLLER_NAME, ControllerActor
from llmserve.serve.ray.membership import ReplicaView, Snapshot
from llmserve.serve.ray_runtime import MEMBERSHIP_NAME, NAMESPACE
from llmserve.serve.status import ServeStatus

CONTROLLER_START_TIMEOUT_S = 60.0
DEPLOY_VISIBLE_TIMEOUT_S = 10.0


def connect_controller() -> tuple[Any, Any, bool]:
    """Join Ray (``RAY_ADDRESS`` or a local one), get or start the detached controller;
    its actor, the membership actor, and whether this call started Ray."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started_ray = False
    if not ray.is_initialized():
        ray.init()
        started_ray = True
    here = ray.get_runtime_context().get_node_id()
    actor: Any = ray.remote(ControllerActor).options(
        name=CONTROLLER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_concurrency=32, num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
    ).remote()
    ray.get(actor.ping.remote(), timeout=CONTROLLER_START_TIMEOUT_S)
    return actor, ray.get_actor(MEMBERSHIP_NAME, NAMESPACE), started_ray


class DetachedControlPlane(ReplicaView):
    runtime_name = "ray-detached"

    def __init__(self, actor: Any, membership: Any, started_ray: bool,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(membership, f"driver:{uuid.uuid4().hex[:8]}", loop)
        self.actor = actor
        self.started_ray = started_ray
        self.route_table: list[tuple[str, str]] = []
        self._routes: dict[str, str] = {}
        self._ingress: dict[str, str] = {}

    @classmethod
    async def create(cls, actor: Any, membership: Any, started_ray: bool) -> DetachedControlPlane:
        plane = cls(actor, membership, started_ray, asyncio.get_running_loop())
        update = await membership.listen.remote(-1, 0.0)
        if update is not None:
            plane.apply(*update)
        plane.start()
        return plane

    # ---- routing from the membership snapshot --------------------------------------
    def apply(self, version: int, snapshot: Snapshot) -> None:
        super().apply(version, snapshot)
        ingress = {key: view for key, view in snapshot.items() if view.is_ingress}
        self._ingress = {app: dep for app, dep in ingress}
        self._routes = {view.route_prefix: key[0] for key, view in ingress.items()
                        if view.route_prefix}
        table = [(prefix.rstrip("/"), app) for prefix, app in self._routes.items()]
        self.route_table = sorted(table, key=lambda entry: len(entry[0]), reverse=True)

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
        while self.version < version and self.loop.time() < deadline:
            await asyncio.sleep(0.005)  # this proxy routes to the new replicas on return

    async def delete_app(self, name: str, wait: bool = True) -> None:
        await _unwrap(self.actor.delete.remote(name, wait))

    async def fetch_status(self, http_url: str | None) -> ServeStatus:
        status: ServeStatus = await _unwrap(self.actor.status.remote())
        return replace(status, runtime=self.runtime_name, http_url=http_url)

    async def shutdown(self) -> None:
        """Stop every application and the detached actors (the cluster keeps nothing)."""
        import ray

        from llmserve.serve.ray.proxy_actor import stop_node_proxies

        for task in self._tasks:
            task.cancel()
        stop_node_proxies()
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
