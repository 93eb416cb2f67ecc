"""The running serve instance: an event-loop thread holding the controller and proxy."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from llmserve.serve.control_plane import ControlPlane
from llmserve.serve.controller import Controller
from llmserve.serve.proxy import HttpProxy, serve_http
from llmserve.serve.runtime import Runtime, make_runtime

T = TypeVar("T")
log = logging.getLogger("llmserve.serve")
_lock = threading.Lock()
DEFAULT_PROXY_LOCATION = "EveryNode"  # as Ray Serve; on the local runtime there are none
_instance: ServeInstance | None = None


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.new_event_loop()


class ServeInstance:
    def __init__(self, runtime: str, host: str, port: int,
                 proxy_location: str = DEFAULT_PROXY_LOCATION) -> None:
        self.runtime_name = runtime
        self.host = host
        self.port = port
        self.proxy_location = proxy_location
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="llmserve-loop",
                                        daemon=True)
        if runtime == "ray":  # the controller is a detached Ray actor; joins Ray here
            from llmserve.serve.ray.driver_control import (
                DetachedControlPlane,
                connect_controller,
            )

            actor, membership, started_ray = connect_controller()
            self._thread.start()
            self.controller: ControlPlane = self.submit(
                DetachedControlPlane.create(actor, membership, started_ray))
        else:
            runtime_impl = make_runtime(runtime)
            self._thread.start()
            self.controller = self.submit(self._make_controller(runtime_impl))
        self._server: Any = None
        self._proxy: HttpProxy | None = None
        self.http_port: int | None = None
        self._proxies_configured: Any = None

    async def _make_controller(self, runtime: Runtime) -> Controller:
        controller = Controller(runtime)
        controller.start()
        return controller

    def submit(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        if _on_serve_thread(self.loop):
            raise RuntimeError("blocking serve call made on the serving loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def ensure_http(self) -> None:
        """Start this process's HTTP proxy; on Ray also have the controller run node
        proxies where ``proxy_location`` says (the one on this node shares the port)."""
        if self._server is None:
            self.submit(self._start_http())
        configure = getattr(self.controller, "configure_proxies", None)
        if configure is not None:
            from llmserve.serve.ray.proxy_actor import ProxyConfig

            config = ProxyConfig(self.proxy_location, self.host, self.port)
            if config != self._proxies_configured:
                self.submit(configure(config))
                self._proxies_configured = config

    async def _start_http(self) -> None:
        self._proxy = HttpProxy(self.controller)
        self._server, self._server_task, self.http_port = await serve_http(
            self._proxy, self.host, self.port,
            reuse_port=self.runtime_name == "ray", timeout_graceful_shutdown=5)
        log.info("HTTP proxy listening on http://%s:%s", self.host, self.http_port)

    @property
    def http_url(self) -> str | None:
        return f"http://{self.host}:{self.http_port}" if self.http_port else None

    def stop(self) -> None:
        self.submit(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    async def _stop(self) -> None:
        if self._proxy is not None:
            self._proxy.draining = True  # in-flight requests finish; new ones get 503
        await self.controller.shutdown()
        if self._server is not None:
            self._server.should_exit = True
            await self._server_task


def _on_serve_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def get_instance() -> ServeInstance:
    if _instance is None:
        raise RuntimeError("serve is not running: call serve.run(...) or serve.start() first")
    return _instance


def set_instance(instance: Any) -> None:
    """Install the instance handles use in this process; a Ray replica installs its view
    of the cluster (an object with ``loop`` and ``controller.router_for``)."""
    global _instance
    with _lock:
        _instance = instance


def get_or_start(runtime: str, host: str, port: int,
                 proxy_location: str | None = None) -> ServeInstance:
    global _instance
    with _lock:
        if _instance is None:
            _instance = ServeInstance(runtime, host, port,
                                      proxy_location or DEFAULT_PROXY_LOCATION)
        elif _instance.runtime_name != runtime:
            raise RuntimeError(
                f"serve already runs on the {_instance.runtime_name!r} runtime; "
                "call serve.shutdown() first"
            )
        elif proxy_location is not None:
            _instance.proxy_location = proxy_location
        return _instance


def attach_to_cluster(host: str, port: int) -> ServeInstance | None:
    """In a driver that started no serve instance but has joined (``ray.init``) a Ray
    cluster running a detached controller: attach to that controller."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    from llmserve.serve.ray.driver_control import controller_exists

    if not controller_exists():
        return None
    return get_or_start("ray", host, port)


def stop_instance() -> None:
    global _instance
    with _lock:
        instance, _instance = _instance, None
    if instance is not None:
        instance.stop()
