"""The module-level API: `serve.run`, `serve.shutdown`, `serve.status`, handles."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Mapping
from typing import Any

from llmserve.serve.deployment import Application, Deployment
from llmserve.serve.handle import DeploymentHandle
from llmserve.serve.instance import (
    ServeInstance,
    attach_to_cluster,
    get_instance,
    get_or_start,
    stop_instance,
)
from llmserve.serve.ray.proxy_config import ProxyConfig
from llmserve.serve.status import ServeStatus

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def start(http_options: Mapping[str, Any] | None = None, runtime: str = "local",
          proxy_location: str | None = None) -> None:
    """Start serve (and its HTTP proxy) without deploying anything."""
    opts = dict(http_options or {})
    instance = get_or_start(runtime, opts.get("host", DEFAULT_HOST),
                            int(opts.get("port", DEFAULT_PORT)),
                            opts.get("location", proxy_location))
    instance.ensure_http()


def run(target: Application | Deployment, *, name: str = "default",
        route_prefix: str | None = "/", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
        blocking: bool = False, runtime: str = "local",
        proxy_location: str | None = None) -> DeploymentHandle:
    """Deploy an application and return a handle to its ingress deployment.

    ``route_prefix=None`` deploys without HTTP. With ``blocking=True`` it serves until
    SIGINT/SIGTERM, then drains in-flight requests and shuts down. On
    ``runtime="ray"``, ``proxy_location`` (``EveryNode``, the default, ``HeadOnly`` or
    ``Disabled``) says where the controller runs HTTP proxies besides this process's
    own, once an application has a route prefix.
    """
    app = target.bind() if isinstance(target, Deployment) else target
    if proxy_location is not None:
        ProxyConfig(proxy_location)  # validates it
    instance = get_or_start(runtime, host, port, proxy_location)
    if route_prefix is not None:
        instance.ensure_http()
    instance.submit(instance.controller.deploy_app(app, name, route_prefix))
    handle = DeploymentHandle(app.deployment.name, name)
    if blocking:
        run_until_signal()
    return handle


def run_until_signal() -> None:
    """Serve until SIGINT/SIGTERM, then drain in-flight requests and shut down."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutdown()


def _instance() -> ServeInstance:
    """The running instance; in a driver that has none but joined a Ray cluster whose
    detached controller runs (another driver started it), one attached to it."""
    try:
        return get_instance()
    except RuntimeError:
        attached = attach_to_cluster(DEFAULT_HOST, DEFAULT_PORT)
        if attached is None:
            raise
        return attached


def delete(name: str) -> None:
    instance = _instance()
    instance.submit(instance.controller.delete_app(name))


def shutdown() -> None:
    """Drain every application and stop serve (a no-op when it is not running). On Ray
    it removes everything, also when another driver started it."""
    with contextlib.suppress(RuntimeError):
        _instance()
    stop_instance()


def status() -> ServeStatus:
    instance = _instance()
    controller = instance.controller

    async def collect() -> ServeStatus:
        return await controller.fetch_status(instance.http_url)

    return instance.submit(collect())


def get_app_handle(name: str = "default") -> DeploymentHandle:
    controller = get_instance().controller
    return DeploymentHandle(controller.ingress_of(name), name)


def get_deployment_handle(deployment_name: str, app_name: str = "default") -> DeploymentHandle:
    get_instance().controller.router_for(app_name, deployment_name)
    return DeploymentHandle(deployment_name, app_name)


def http_url() -> str | None:
    """Base URL of the HTTP proxy (useful with ``port=0``)."""
    return get_instance().http_url
