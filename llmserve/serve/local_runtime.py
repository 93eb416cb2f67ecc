"""The embedded runtime: replicas are objects in the serving process.

Async methods run on the serving event loop; sync methods and generators run in a
thread pool so they never block it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.types import Receive, Scope, Send

from llmserve.serve.asgi import serve_asgi
from llmserve.serve.context import (
    ReplicaContext,
    RequestMetadata,
    set_replica_context,
    set_request_metadata,
)
from llmserve.serve.exceptions import ReplicaDiedError, ReplicaUnavailableError
from llmserve.serve.gc_freeze import freeze_startup_heap
from llmserve.serve.multiplex import loaded_model_ids
from llmserve.serve.ray.placement import declared_resources
from llmserve.serve.runtime import ControllerLink, ReplicaRef, ReplicaSpec
from llmserve.serve.status import ReplicaNode

_DONE = object()
log = logging.getLogger("llmserve.serve")


class LocalReplica:
    def __init__(self, spec: ReplicaSpec, executor: ThreadPoolExecutor) -> None:
        self.spec = spec
        self.replica_id = spec.replica_id
        self._executor = executor
        self._instance: Any = None
        self._ongoing: set[asyncio.Task[Any]] = set()
        self._num_ongoing = 0
        self._dead_reason: str | None = None
        self._shutdown_done = False
        self._context = ReplicaContext(spec.app_name, spec.deployment_name, spec.replica_id)

    @property
    def num_ongoing(self) -> int:
        return self._num_ongoing

    @property
    def multiplexed_model_ids(self) -> frozenset[str]:
        return loaded_model_ids(self._instance)

    @property
    def is_alive(self) -> bool:
        return self._dead_reason is None

    @property
    def node(self) -> ReplicaNode:
        """This process on this host, holding what its options declare (nothing reserves
        it on the local runtime)."""
        return ReplicaNode("local", "127.0.0.1", socket.gethostname(), os.getpid(),
                           declared_resources(self.spec.config.ray_actor_options))

    async def start(self) -> None:
        set_replica_context(self._context)
        target = self.spec.func_or_class
        if not inspect.isclass(target):
            self._instance = target
        elif inspect.iscoroutinefunction(target.__init__):
            instance = target.__new__(target)
            await instance.__init__(*self.spec.init_args, **self.spec.init_kwargs)  # type: ignore[misc]
            self._instance = instance
        else:
            self._instance = target(*self.spec.init_args, **self.spec.init_kwargs)
        if self.spec.config.user_config is not None:
            await self.reconfigure(self.spec.config.user_config)
        freeze_startup_heap()  # the process's first replica, before it takes traffic

    async def reconfigure(self, user_config: Any) -> None:
        hook = getattr(self._instance, "reconfigure", None)
        if hook is None:
            raise TypeError(
                f"deployment {self.spec.deployment_name!r} has a user_config but no "
                "reconfigure(config) method"
            )
        await self._run(hook, (user_config,), {})

    async def check_health(self) -> None:
        if self._dead_reason is not None:
            raise ReplicaDiedError(self._dead_reason)
        hook = getattr(self._instance, "check_health", None)
        if hook is not None:
            await self._run(hook, (), {})

    async def call(self, meta: RequestMetadata, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        method = self._method(meta.method_name)
        with self._tracked(meta):
            try:
                return await self._run(method, args, kwargs)
            except asyncio.CancelledError:
                self._raise_if_dead()
                raise

    async def stream(self, meta: RequestMetadata, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        method = self._method(meta.method_name)
        with self._tracked(meta):
            try:
                result = method(*args, **kwargs)
                if inspect.isasyncgen(result):
                    try:
                        async for item in result:
                            yield item
                    finally:
                        await result.aclose()
                elif inspect.isgenerator(result):
                    async for item in self._iterate_in_thread(result):
                        yield item
                else:
                    raise TypeError(
                        f"{meta.method_name} was called with stream=True but is not a generator"
                    )
            except asyncio.CancelledError:
                self._raise_if_dead()
                raise

    async def handle_http(self, meta: RequestMetadata, scope: Scope, receive: Receive,
                          send: Send) -> None:
        with self._tracked(meta):
            try:
                await serve_asgi(self._instance, self.spec.ingress_app, scope, receive, send)
            except asyncio.CancelledError:
                self._raise_if_dead()
                raise

    def kill(self, reason: str) -> None:
        self._dead_reason = reason
        for task in list(self._ongoing):
            task.cancel()

    async def run_shutdown_hook(self) -> None:
        """Call the instance's ``__del__`` (awaiting it when async), once."""
        if self._shutdown_done or self._instance is None:
            return
        self._shutdown_done = True
        hook = getattr(type(self._instance), "__del__", None)
        if hook is None or not inspect.isclass(self.spec.func_or_class):
            return
        result = hook(self._instance)
        if inspect.isawaitable(result):
            await result

    def _method(self, name: str) -> Callable[..., Any]:
        if self._dead_reason is not None:
            raise ReplicaUnavailableError(self._dead_reason)
        if not inspect.isclass(self.spec.func_or_class):
            if name != "__call__":
                raise AttributeError(f"function deployment has no method {name!r}")
            return self._instance  # type: ignore[no-any-return]
        method = getattr(self._instance, name, None)
        if method is None or (name.startswith("_") and name != "__call__"):
            raise AttributeError(
                f"deployment {self.spec.deployment_name!r} has no method {name!r}"
            )
        return method  # type: ignore[no-any-return]

    async def _run(self, fn: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004
        ):
            return await fn(*args, **kwargs)
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        result = await asyncio.get_running_loop().run_in_executor(self._executor, call)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _iterate_in_thread(self, gen: Any) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        try:
            while True:
                step = functools.partial(ctx.run, next, gen, _DONE)
                item = await loop.run_in_executor(self._executor, step)
                if item is _DONE:
                    return
                yield item
        finally:
            gen.close()

    def _raise_if_dead(self) -> None:
        if self._dead_reason is not None:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise ReplicaDiedError(
                f"replica {self.replica_id} died while serving the request: {self._dead_reason}"
            ) from None

    def _tracked(self, meta: RequestMetadata) -> _Tracked:
        return _Tracked(self, meta)


class _Tracked:
    """Counts a request as ongoing and makes its metadata visible to user code."""

    def __init__(self, replica: LocalReplica, meta: RequestMetadata) -> None:
        self._replica = replica
        self._meta = meta
        self._task: asyncio.Task[Any] | None = None
        self._tokens: tuple[Any, Any] | None = None

    def __enter__(self) -> None:
        replica = self._replica
        if replica._dead_reason is not None:
            raise ReplicaUnavailableError(replica._dead_reason)
        replica._num_ongoing += 1
        self._task = asyncio.current_task()
        if self._task is not None:
            replica._ongoing.add(self._task)
        self._tokens = (set_request_metadata(self._meta), set_replica_context(replica._context))

    def __exit__(self, *exc: object) -> None:
        replica = self._replica
        replica._num_ongoing -= 1
        if self._task is not None:
            replica._ongoing.discard(self._task)


class LocalRuntime:
    name = "local"

    def __init__(self, max_threads: int = 32) -> None:
        self._executor = ThreadPoolExecutor(max_threads, thread_name_prefix="llmserve-replica")

    def link(self, controller: ControllerLink) -> None:
        """Every router is the controller's own: nothing to publish, no remote load."""

    async def start_replica(self, spec: ReplicaSpec) -> ReplicaRef:
        replica = LocalReplica(spec, self._executor)
        await replica.start()
        return replica

    async def stop_replica(self, ref: ReplicaRef) -> None:
        assert isinstance(ref, LocalReplica)
        try:
            await ref.run_shutdown_hook()
        finally:
            ref.kill("replica stopped")

    async def kill_replica(self, ref: ReplicaRef, reason: str) -> None:
        """Fail its requests at once, then still run its shutdown hook (free resources)."""
        assert isinstance(ref, LocalReplica)
        ref.kill(reason)
        try:
            await ref.run_shutdown_hook()
        except Exception:
            log.exception("shutdown hook of killed replica %s failed", ref.replica_id)

    async def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
