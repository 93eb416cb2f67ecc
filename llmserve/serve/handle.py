"""`DeploymentHandle`: call a deployment's replicas from anywhere in the process.

Calls made on the serving loop (from inside a replica) stay on it; calls from other
threads (plain scripts, Jupyter, an async main) hop onto it and back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import uuid
from collections.abc import AsyncIterator, Coroutine, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from llmserve.serve.context import RequestMetadata, get_request_metadata
from llmserve.serve.exceptions import ReplicaUnavailableError
from llmserve.serve.metrics import observe_request
from routing import RouteRequest

_END = object()


@dataclass(frozen=True)
class HandleOptions:
    method_name: str = "__call__"
    stream: bool = False
    multiplexed_model_id: str = ""
    session_key: str | None = None
    replica_id: str | None = None


class DeploymentHandle:
    """A picklable reference to a deployment; `.remote()` sends it a request."""

    def __init__(self, deployment_name: str, app_name: str = "default",
                 options: HandleOptions | None = None) -> None:
        self.deployment_name = deployment_name
        self.app_name = app_name
        self.handle_options = options or HandleOptions()

    def __reduce__(self) -> tuple[Any, ...]:
        return (DeploymentHandle, (self.deployment_name, self.app_name, self.handle_options))

    def __repr__(self) -> str:
        return f"DeploymentHandle({self.app_name}/{self.deployment_name})"

    def options(self, *, method_name: str | None = None, stream: bool | None = None,
                multiplexed_model_id: str | None = None,
                session_key: str | None = None,
                replica_id: str | None = None) -> DeploymentHandle:
        old = self.handle_options
        new = HandleOptions(
            method_name=old.method_name if method_name is None else method_name,
            stream=old.stream if stream is None else stream,
            multiplexed_model_id=(old.multiplexed_model_id if multiplexed_model_id is None
                                  else multiplexed_model_id),
            session_key=old.session_key if session_key is None else session_key,
            replica_id=old.replica_id if replica_id is None else replica_id,
        )
        return DeploymentHandle(self.deployment_name, self.app_name, new)

    def __getattr__(self, name: str) -> DeploymentHandle:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Send a request: a `DeploymentResponse`, or a generator with ``stream=True``."""
        from llmserve.serve.instance import get_instance

        instance = get_instance()
        opts = self.handle_options
        parent = get_request_metadata()
        meta = RequestMetadata(
            request_id=parent.request_id if parent else uuid.uuid4().hex,
            method_name=opts.method_name,
            multiplexed_model_id=opts.multiplexed_model_id,
            is_streaming=opts.stream,
            session_key=opts.session_key,
        )
        call = _Call(self.app_name, self.deployment_name, meta, args, kwargs, opts.replica_id)
        if opts.stream:
            return DeploymentResponseGenerator(call, instance.loop)
        return DeploymentResponse(call.run(), instance.loop)


@dataclass
class _Call:
    app_name: str
    deployment: str
    meta: RequestMetadata
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    replica_id: str | None = None

    def route_request(self) -> RouteRequest:
        return RouteRequest(self.meta.request_id, self.meta.multiplexed_model_id,
                            self.meta.session_key)

    async def _resolved_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args = tuple([await a if isinstance(a, DeploymentResponse) else a for a in self.args])
        kwargs = {k: await v if isinstance(v, DeploymentResponse) else v
                  for k, v in self.kwargs.items()}
        return args, kwargs

    async def run(self) -> Any:
        from llmserve.serve.instance import get_instance

        router = get_instance().controller.router_for(self.app_name, self.deployment)
        args, kwargs = await self._resolved_args()
        request = self.route_request()
        while True:
            if self.replica_id is not None:
                replica = router.acquire_pinned(self.replica_id, request)
            else:
                replica = await router.acquire(request)
            try:
                with observe_request(self.app_name, self.deployment):
                    result = await replica.call(self.meta, args, kwargs)
                router.first_output(replica, request)
                return result
            except ReplicaUnavailableError:
                if self.replica_id is not None:
                    raise
                continue  # it never started there: try another replica
            finally:
                router.release(replica, request)

    async def stream(self) -> AsyncIterator[Any]:
        from llmserve.serve.instance import get_instance

        router = get_instance().controller.router_for(self.app_name, self.deployment)
        args, kwargs = await self._resolved_args()
        request = self.route_request()
        while True:
            replica = await router.acquire(request)
            started = False
            try:
                with observe_request(self.app_name, self.deployment):
                    async for item in replica.stream(self.meta, args, kwargs):
                        if not started:
                            started = True
                            router.first_output(replica, request)
                        yield item
                return
            except ReplicaUnavailableError:
                if started:
                    raise
            finally:
                router.release(replica, request)


class DeploymentResponse:
    """The future result of one call: ``await`` it, or ``.result()`` from sync code."""

    def __init__(self, coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task: asyncio.Task[Any] | None = None
        self._future: concurrent.futures.Future[Any] | None = None
        if _on_loop(loop):
            self._task = loop.create_task(coro)
        else:
            self._future = asyncio.run_coroutine_threadsafe(coro, loop)

    def __await__(self) -> Generator[Any, None, Any]:
        if self._task is not None:
            return self._task.__await__()
        assert self._future is not None
        return asyncio.wrap_future(self._future).__await__()

    def result(self, timeout_s: float | None = None) -> Any:
        if self._future is None:
            raise RuntimeError(
                "DeploymentResponse.result() would block the serving loop; use `await` here"
            )
        try:
            return self._future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"no result within {timeout_s} s") from None

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        elif self._future is not None:
            self._future.cancel()

    def done(self) -> bool:
        if self._task is not None:
            return self._task.done()
        assert self._future is not None
        return self._future.done()


class DeploymentResponseGenerator:
    """The items a streaming call yields; iterate with ``async for`` or ``for``."""

    def __init__(self, call: _Call, loop: asyncio.AbstractEventLoop) -> None:
        self._call = call
        self._loop = loop
        self._iter: AsyncIterator[Any] | None = None
        self._pump: concurrent.futures.Future[None] | None = None
        self._sync_items: queue.Queue[Any] | None = None

    def __aiter__(self) -> DeploymentResponseGenerator:
        return self

    async def __anext__(self) -> Any:
        if self._iter is None:
            self._iter = self._start_async()
        return await self._iter.__anext__()

    def _start_async(self) -> AsyncIterator[Any]:
        if _on_loop(self._loop):
            return self._call.stream()
        return self._bridge_async()

    async def _bridge_async(self) -> AsyncIterator[Any]:
        consumer = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()
        self._pump = asyncio.run_coroutine_threadsafe(
            self._forward(lambda item: consumer.call_soon_threadsafe(items.put_nowait, item)),
            self._loop,
        )
        try:
            while _has_more(item := await items.get()):
                yield item
        finally:
            self.cancel()

    def __iter__(self) -> Iterator[Any]:
        if _on_loop(self._loop):
            raise RuntimeError("iterate a streaming response with `async for` on the loop")
        self._sync_items = queue.Queue()
        self._pump = asyncio.run_coroutine_threadsafe(
            self._forward(self._sync_items.put), self._loop
        )
        try:
            while _has_more(item := self._sync_items.get()):
                yield item
        finally:
            self.cancel()

    async def _forward(self, deliver: Any) -> None:
        try:
            async for item in self._call.stream():
                deliver(item)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            deliver(_Failure(exc))
            return
        deliver(_END)

    def cancel(self) -> None:
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()

    async def aclose(self) -> None:
        self.cancel()
        if self._iter is not None and hasattr(self._iter, "aclose"):
            await self._iter.aclose()


@dataclass
class _Failure:
    error: BaseException


def _has_more(item: Any) -> bool:
    """False at the end of a forwarded stream; raises the error it carried."""
    if isinstance(item, _Failure):
        raise item.error
    return item is not _END


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False



def replica_ids(handle: DeploymentHandle) -> list[str]:
    """Ids of the deployment's running replicas (for per-replica control calls)."""
    from llmserve.serve.instance import get_instance

    router = get_instance().controller.router_for(handle.app_name, handle.deployment_name)
    return router.replica_ids


def report_ongoing(handle: DeploymentHandle, ongoing: float) -> None:
    """Requests served for this deployment outside its handles (e.g. straight to an
    engine); its autoscaler counts them like handle requests."""
    from llmserve.serve.instance import get_instance

    router = get_instance().controller.router_for(handle.app_name, handle.deployment_name)
    router.reported_ongoing = ongoing
