"""Serve HTTP through a replica: FastAPI class-based ingress and plain ``__call__`` ingress."""

from __future__ import annotations

import contextvars
import inspect
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from llmserve.serve.http_errors import REQUEST_ERRORS, http_error_of

_instance: contextvars.ContextVar[Any] = contextvars.ContextVar("llmserve_ingress_instance")


def current_instance() -> Any:
    """FastAPI dependency: the replica's instance that serves this request (``self``)."""
    return _instance.get()


def bind_class_routes(app: Any, cls: type) -> None:
    """Rewrite routes whose endpoints are methods of ``cls`` so ``self`` is injected.

    ``self`` becomes a dependency resolved per request to the replica instance serving it,
    so one FastAPI app serves every replica of the deployment.
    """
    from fastapi.dependencies.utils import get_typed_signature
    from fastapi.routing import APIRoute

    methods = {id(v) for v in vars(cls).values() if inspect.isfunction(v)}
    routes = app.router.routes
    for index, route in enumerate(routes):
        if not isinstance(route, APIRoute) or id(route.endpoint) not in methods:
            continue
        endpoint = _inject_self(route.endpoint, get_typed_signature(route.endpoint))
        init_params = inspect.signature(APIRoute.__init__).parameters
        kwargs = {
            name: getattr(route, name)
            for name in init_params
            if name not in {"self", "path", "endpoint"} and hasattr(route, name)
        }
        routes[index] = APIRoute(route.path, endpoint, **kwargs)


def install_error_handlers(app: Any) -> None:
    """Answer the core's request errors (an overloaded or unavailable deployment behind a
    handle call in a route) as 503s with ``Retry-After`` inside ``app``, like the proxy
    does, instead of the app's own 500 (after which the proxy could not answer)."""
    for error in REQUEST_ERRORS:
        app.add_exception_handler(error, _error_response)


async def _error_response(request: Request, exc: Exception) -> Response:
    error = http_error_of(exc)
    if error is None:  # only registered for REQUEST_ERRORS
        raise exc
    headers = {k.decode(): v.decode()
               for k, v in error.headers(request.headers.get("x-request-id"))}
    return Response(error.body(), status_code=error.status, headers=headers)


def _inject_self(func: Callable[..., Any], signature: inspect.Signature) -> Callable[..., Any]:
    """``func`` with ``self`` taken from the request's replica instance, and the rest of
    its signature for FastAPI to fill. Not a FastAPI dependency: FastAPI runs a plain
    function dependency in its thread pool, a thread hop per request (5x slower)."""
    params = list(signature.parameters.values())[1:]
    new_params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]

    # ``current_instance`` by name, not the ContextVar: the app is cloudpickled to Ray
    # replicas with these closures, and a ContextVar does not pickle
    if inspect.iscoroutinefunction(func):
        async def endpoint(**kwargs: Any) -> Any:
            return await func(current_instance(), **kwargs)
    else:
        def endpoint(**kwargs: Any) -> Any:  # type: ignore[misc]
            # FastAPI runs it in its thread pool, in a copy of the request's context
            return func(current_instance(), **kwargs)

    endpoint.__name__ = func.__name__
    endpoint.__doc__ = func.__doc__
    endpoint.__signature__ = signature.replace(parameters=new_params)  # type: ignore[attr-defined]
    return endpoint


async def serve_asgi(instance: Any, ingress_app: Any, scope: Scope, receive: Receive,
                     send: Send) -> None:
    """Serve one ASGI request with ``instance`` as the replica behind it."""
    token = _instance.set(instance)
    try:
        if ingress_app is not None:
            await ingress_app(scope, receive, send)
        else:
            result = instance(Request(scope, receive))
            if inspect.isawaitable(result):
                result = await result
            await to_response(result)(scope, receive, send)
    finally:
        _instance.reset(token)


def to_response(result: Any) -> Response:
    """Convert what a plain ``__call__`` returned into a Starlette response."""
    if isinstance(result, Response):
        return result
    if isinstance(result, bytes):
        return Response(result)
    if isinstance(result, str):
        return PlainTextResponse(result)
    if inspect.isasyncgen(result) or isinstance(result, Iterator):
        return StreamingResponse(_encode_stream(result))
    return JSONResponse(json.loads(json.dumps(result, default=str)))


async def _encode_stream(items: Any) -> AsyncIterator[bytes]:
    if inspect.isasyncgen(items):
        async for item in items:
            yield item if isinstance(item, bytes) else str(item).encode()
    else:
        for item in items:
            yield item if isinstance(item, bytes) else str(item).encode()
