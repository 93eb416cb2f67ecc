"""The HTTP proxy: matches a route prefix, routes to the app's ingress replicas."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import uuid
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Message, Receive, Scope, Send

from llmserve.serve.admin import admin_key_digest, bearer_matches
from llmserve.serve.context import RequestMetadata
from llmserve.serve.control_plane import ControlPlane
from llmserve.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaDiedError,
    ReplicaUnavailableError,
)
from llmserve.serve.header_deadline import http_protocol
from llmserve.serve.http_errors import HttpError, http_error_of
from llmserve.serve.metrics import SERVE_REGISTRY, observe_request
from llmserve.serve.router import Router
from llmserve.serve.runtime import ReplicaRef
from llmserve.serve.status import status_to_json
from routing import RouteRequest

MODEL_ID_HEADER = b"serve_multiplexed_model_id"
# Idle keep-alive connections stay open this long (nginx's default). Longer than common
# clients' own idle expiry (httpx 5 s, aiohttp 15 s), so a client never reuses a
# connection the server is closing at that instant (uvicorn's 5 s default made long
# multi-turn think times fail with "Can not write request body").
KEEP_ALIVE_S = 75
_ROUTING_HEADERS = frozenset({b"x-request-id", b"x-session-id", MODEL_ID_HEADER})
_ID_PREFIX = uuid.uuid4().hex[:16] + "-"
_ids = itertools.count()


class HttpProxy:
    def __init__(self, controller: ControlPlane) -> None:
        self.controller = controller
        self.admin_digest = admin_key_digest()
        self.draining = False  # shutting down: fail health checks, refuse new requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] not in ("http", "websocket"):
            return
        path: str = scope["path"]
        if path == "/-/healthz":
            await _send_text(send, 503 if self.draining else 200,
                             "draining" if self.draining else "success")
            return
        if path in ("/-/routes", "/-/status", "/-/metrics") and self.admin_digest is not None \
                and not bearer_matches(self.admin_digest, scope["headers"]):
            await _send_error(send, HttpError(401, f"{path} needs the admin key",
                                              "invalid_api_key"))
            return
        if path == "/-/metrics":  # the serving core's metrics (the gateway adds its own)
            await _send_body(send, 200, generate_latest(SERVE_REGISTRY),
                             [(b"content-type", CONTENT_TYPE_LATEST.encode())])
            return
        if path == "/-/routes":
            await _send_json(send, 200, self.controller.routes())
            return
        if path == "/-/status":
            status = await self.controller.fetch_status(_own_url(scope))
            await _send_json(send, 200, status_to_json(status))
            return
        if self.draining and not path.startswith("/-/"):
            await _send_error(send, HttpError(
                503, "the server is shutting down; retry on another", "unavailable", 1.0))
            return
        match = self._match(path)
        if match is None:
            await _send_error(send, HttpError(404, f"no application serves path {path!r}",
                                              "not_found"))
            return
        prefix, app_name = match
        await self._forward(scope, receive, send, prefix, app_name)

    def _match(self, path: str) -> tuple[str, str] | None:
        for stem, app in self.controller.route_table:  # longest prefix first
            if stem == "" or path == stem or path.startswith(stem + "/"):
                return stem, app
        return None

    async def _forward(self, scope: Scope, receive: Receive, send: Send, prefix: str,
                       app_name: str) -> None:
        request_id = session = model_id = ""
        for name, value in scope["headers"]:
            if name in _ROUTING_HEADERS:
                # latin-1 decodes any bytes (as Starlette does); the app judges the value
                if name == b"x-request-id":
                    request_id = value.decode("latin-1")
                elif name == b"x-session-id":
                    session = value.decode("latin-1")
                else:
                    model_id = value.decode("latin-1")
        request_id = request_id or f"{_ID_PREFIX}{next(_ids)}"
        meta = RequestMetadata(request_id, "__call__", model_id, False, session or None)
        request = RouteRequest(request_id, model_id, meta.session_key)
        child = dict(scope, root_path=scope.get("root_path", "") + prefix) if prefix else scope
        watch: _ResponseWatch | None = None
        try:
            ingress = self.controller.ingress_of(app_name)
            router = self.controller.router_for(app_name, ingress)
            while True:
                replica = await router.acquire(request)
                watch = _ResponseWatch(send, router, replica, request)
                try:
                    with observe_request(app_name, ingress):
                        await replica.handle_http(meta, child, receive, watch)
                    return
                except ReplicaUnavailableError:
                    continue
                finally:
                    router.release(replica, request)
        except (BackPressureError, DeploymentUnavailableError, ReplicaDiedError) as exc:
            if watch is not None and watch.started:
                # the replica died mid-response: a second response cannot follow; the
                # server closes the connection, which the client sees
                return
            error = http_error_of(exc)
            assert error is not None
            await _send_error(send, error, request_id)


class _ResponseWatch:
    """The ASGI ``send`` given to a replica: tells the router when its response starts
    (the request's first output) and remembers that it did."""

    __slots__ = ("replica", "request", "router", "send", "started")

    def __init__(self, send: Send, router: Router, replica: ReplicaRef,
                 request: RouteRequest) -> None:
        self.send = send
        self.router = router
        self.replica = replica
        self.request = request
        self.started = False

    @property
    def wrapped_send(self) -> Send | None:
        """The server's own ``send``, once the response has started (the watch has nothing
        left to see): a relay may write the body through it directly."""
        return self.send if self.started else None

    async def __call__(self, message: Message) -> None:
        if not self.started and message["type"] == "http.response.start":
            self.started = True
            self.router.first_output(self.replica, self.request)
        await self.send(message)


def _own_url(scope: Scope) -> str | None:
    server = scope.get("server")
    return f"{scope.get('scheme', 'http')}://{server[0]}:{server[1]}" if server else None


async def serve_http(proxy: HttpProxy, host: str, port: int, reuse_port: bool = False,
                     **uvicorn_options: Any) -> tuple[Any, asyncio.Task[None], int]:
    """Serve ``proxy`` under uvicorn on the running loop; returns once it is bound, with
    the server, its task and the bound port (``port=0`` picks a free one).

    ``reuse_port``: bind with ``SO_REUSEPORT``, so the proxies of one node (on Ray, the
    driver's and the node's proxy actor) share the port and the kernel spreads
    connections between them; when one exits the other keeps serving it."""
    import uvicorn

    uvicorn_options.setdefault("http", http_protocol())  # headers in time (slowloris)
    config = uvicorn.Config(proxy, host=host, port=port, log_level="warning",
                            lifespan="off", access_log=False,
                            timeout_keep_alive=KEEP_ALIVE_S, **uvicorn_options)
    server = uvicorn.Server(config)
    sockets = [_bind_reusing_port(host, port)] if reuse_port else None
    task = asyncio.get_running_loop().create_task(server.serve(sockets=sockets))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(f"the HTTP proxy could not bind {host}:{port}")
        await asyncio.sleep(0.01)
    return server, task, int(server.servers[0].sockets[0].getsockname()[1])


def _bind_reusing_port(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _send_text(send: Send, status: int, text: str) -> None:
    await _send_body(send, status, text.encode(),
                     [(b"content-type", b"text/plain; charset=utf-8")])


async def _send_json(send: Send, status: int, body: Any) -> None:
    await _send_body(send, status, json.dumps(body).encode(),
                     [(b"content-type", b"application/json")])


async def _send_error(send: Send, error: HttpError, request_id: str | None = None) -> None:
    await _send_body(send, error.status, error.body(), error.headers(request_id))


async def _send_body(send: Send, status: int, body: bytes,
                     headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
