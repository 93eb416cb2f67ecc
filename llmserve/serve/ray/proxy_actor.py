"""HTTP proxies on the cluster's nodes (``runtime="ray-detached"``).

A `ProxyActor` is the same `HttpProxy` the driver runs, in a detached, named,
restartable actor pinned to one node. Like the driver, it holds no controller: it routes
with its own routers, fed by the membership long-poll (`DetachedControlPlane`), and asks
the controller actor only for ``/-/status``. `start_node_proxies` starts one on every
alive node (or the head only).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from llmserve.serve.ray.controller_actor import CONTROLLER_NAME
from llmserve.serve.ray_runtime import MEMBERSHIP_NAME, NAMESPACE

T = TypeVar("T")
PROXY_NAME_PREFIX = "llmserve_proxy:"


class ProxyActor:
    """Wrapped by ``ray.remote``; serves HTTP on ``host:port`` of its node."""

    def __init__(self, host: str, port: int) -> None:
        import ray

        from llmserve.serve.ray.driver_control import DetachedControlPlane

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True,
                         name="llmserve-proxy").start()
        controller = ray.get_actor(CONTROLLER_NAME, NAMESPACE)
        membership = ray.get_actor(MEMBERSHIP_NAME, NAMESPACE)
        self.plane = self._submit(DetachedControlPlane.create(controller, membership, False))
        util: Any = ray.util
        self.node_ip: str = util.get_node_ip_address()
        self.port = self._submit(self._serve(host, port))

    def _submit(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _serve(self, host: str, port: int) -> int:
        from llmserve.serve.proxy import HttpProxy, serve_http

        _, self._server_task, bound = await serve_http(HttpProxy(self.plane), host, port)
        return bound

    def url(self) -> str:
        return f"http://{self.node_ip}:{self.port}"


def start_node_proxies(port: int = 8000, host: str = "0.0.0.0",
                       head_only: bool = False) -> dict[str, str]:
    """Start (or find) a proxy on every alive node, or on the head only; node id -> URL.

    Each is detached and restarted by Ray when it dies (``max_restarts=-1``, pinned to its
    node). `serve.shutdown()` stops them with the detached controller."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    cluster: Any = ray
    nodes = [n["NodeID"] for n in cluster.nodes() if n["Alive"]]
    if head_only:
        nodes = [here]  # the driver runs on the head (as in a RayJob)
    proxies: dict[str, Any] = {}
    for node_id in nodes:
        proxies[node_id] = ray.remote(ProxyActor).options(
            name=PROXY_NAME_PREFIX + node_id, namespace=NAMESPACE, lifetime="detached",
            get_if_exists=True, max_restarts=-1, num_cpus=0, max_concurrency=4,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(host, port)
    urls = ray.get([proxy.url.remote() for proxy in proxies.values()])
    return dict(zip(proxies, urls, strict=True))


def stop_node_proxies() -> None:
    import ray
    from ray.util import list_named_actors

    for entry in list_named_actors(all_namespaces=True):
        name, namespace = entry["name"], entry["namespace"]  # type: ignore[index]
        if namespace == NAMESPACE and name.startswith(PROXY_NAME_PREFIX):
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(name, NAMESPACE), no_restart=True)
