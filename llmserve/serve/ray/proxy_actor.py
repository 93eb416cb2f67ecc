"""HTTP proxies on the cluster's nodes, owned by the controller (``proxy_location``).

A `ProxyActor` is the same `HttpProxy` the driver runs, in a detached, named,
restartable actor pinned to one node. Like the driver, it holds no controller: it routes
with its own routers, fed by the membership long-poll (`DetachedControlPlane`), runs its
own copy of every in-proxy replica (the OpenAI ingress), and asks the controller actor
only for ``/-/status``. The controller calls `reconcile_node_proxies` every few seconds:
a proxy on every alive node (``EveryNode``) or on the head only (``HeadOnly``), started
on nodes that join and removed for nodes that die.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from llmserve.serve.handle_context import HandleContext, install_handle_context
from llmserve.serve.proxy import HttpProxy, serve_http
from llmserve.serve.ray.driver_control import DetachedControlPlane
from llmserve.serve.ray.names import (
    CONTROLLER_NAME,
    MEMBERSHIP_NAME,
    NAMESPACE,
    PROXY_NAME_PREFIX,
)
from llmserve.serve.ray.proxy_config import ProxyConfig

T = TypeVar("T")
log = logging.getLogger("llmserve.serve")
HEAD_NODE_RESOURCE = "node:__internal_head__"
STOP_TIMEOUT_S = 5.0


class ProxyActor:
    """Wrapped by ``ray.remote``; serves HTTP on ``host:port`` of its node."""

    def __init__(self, host: str, port: int) -> None:
        import ray

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True,
                         name="llmserve-proxy").start()
        controller = ray.get_actor(CONTROLLER_NAME, NAMESPACE)
        membership = ray.get_actor(MEMBERSHIP_NAME, NAMESPACE)
        self.plane = DetachedControlPlane(controller, membership, False, self.loop, "proxy")
        # handles inside in-proxy replicas route through it
        install_handle_context(HandleContext(self.loop, self.plane))
        self._submit(self.plane.follow())
        util: Any = ray.util
        self.node_ip: str = util.get_node_ip_address()
        self.port = self._submit(self._serve(host, port))

    def _submit(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _serve(self, host: str, port: int) -> int:
        _, self._server_task, bound = await serve_http(HttpProxy(self.plane), host, port,
                                                       reuse_port=True)
        return bound

    def url(self) -> str:
        return f"http://{self.node_ip}:{self.port}"

    def pid(self) -> int:
        import os

        return os.getpid()

    def stop(self) -> None:
        """Stop its in-proxy replicas (their shutdown hooks run) before it is killed."""
        self._submit(self.plane.close())


def wanted_nodes(location: str, nodes: list[dict[str, Any]]) -> set[str]:
    """The node ids that should run a proxy, from ``ray.nodes()``."""
    alive = [n for n in nodes if n.get("Alive")]
    if location == "EveryNode":
        return {n["NodeID"] for n in alive}
    if location == "HeadOnly":
        return {n["NodeID"] for n in alive if HEAD_NODE_RESOURCE in n.get("Resources", {})}
    return set()


def node_proxies() -> dict[str, Any]:
    """The node proxy actors that exist, by node id."""
    import ray
    from ray.util import list_named_actors

    found: dict[str, Any] = {}
    for entry in list_named_actors(all_namespaces=True):
        name, namespace = entry["name"], entry["namespace"]  # type: ignore[index]
        if namespace == NAMESPACE and name.startswith(PROXY_NAME_PREFIX):
            with contextlib.suppress(ValueError):
                found[name[len(PROXY_NAME_PREFIX):]] = ray.get_actor(name, NAMESPACE)
    return found


def reconcile_node_proxies(config: ProxyConfig) -> None:
    """Start the proxies ``config`` wants and lacks; stop those on nodes no longer wanted
    (dead ones included). Blocking Ray calls: the controller runs it in a thread."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster: Any = ray
    wanted = wanted_nodes(config.location, cluster.nodes())
    existing = node_proxies()
    for node_id in sorted(wanted - set(existing)):
        log.info("starting an HTTP proxy on node %s", node_id[:8])
        ray.remote(ProxyActor).options(
            name=PROXY_NAME_PREFIX + node_id, namespace=NAMESPACE, lifetime="detached",
            get_if_exists=True, max_restarts=-1, num_cpus=0, max_concurrency=4,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(config.host, config.port)
    for node_id, actor in existing.items():
        if node_id not in wanted:
            log.info("removing the HTTP proxy of node %s", node_id[:8])
            _stop(actor)


def node_proxy_urls(timeout_s: float = 60.0) -> dict[str, str]:
    """Node id -> URL of each node proxy (waits for them to bind)."""
    import ray

    proxies = node_proxies()
    urls = ray.get([proxy.url.remote() for proxy in proxies.values()], timeout=timeout_s)
    return dict(zip(proxies, urls, strict=True))


def stop_node_proxies() -> None:
    for actor in node_proxies().values():
        _stop(actor)


def _stop(actor: Any) -> None:
    import ray

    with contextlib.suppress(Exception):
        ray.get(actor.stop.remote(), timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)
