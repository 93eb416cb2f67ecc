"""`RayReplicaRef`: a replica actor as the router and controller see it.

Calls are Ray actor calls awaited on the caller's event loop; streams are Ray streaming
generators. Errors come back as the replica raised them (user exceptions unwrapped from
Ray's wrapper); a dead actor turns into `ReplicaDiedError` for requests that were sent
to it and `ReplicaUnavailableError` (retried elsewhere) for requests that were not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from llmserve.serve.context import RequestMetadata
from llmserve.serve.exceptions import ReplicaDiedError, ReplicaUnavailableError
from llmserve.serve.ray.node_info import ReplicaNodeInfo
from llmserve.serve.status import ReplicaNode

log = logging.getLogger("llmserve.serve")
STATS_TIMEOUT_S = 2.0
STATS_MIN_INTERVAL_S = 0.05
SCOPE_KEYS = ("type", "asgi", "http_version", "method", "scheme", "path", "raw_path",
              "root_path", "query_string", "headers", "client", "server")


class RayReplicaRef:
    """One replica actor. The runtime's own refs also watch the actor's stats and death
    (`watch`); refs rebuilt inside other replicas only count their own calls."""

    def __init__(self, replica_id: str, actor: Any, info: ReplicaNodeInfo | None = None,
                 placement_group: Any = None) -> None:
        self._replica_id = replica_id
        self.actor = actor
        self.info = info
        self.placement_group = placement_group
        self._local_ongoing = 0
        self._reported_ongoing = 0
        self._model_ids: frozenset[str] = frozenset()
        self._dead_reason: str | None = None
        self._watch_task: asyncio.Task[None] | None = None

    # ---- what the router reads -----------------------------------------------------
    @property
    def replica_id(self) -> str:
        return self._replica_id

    @property
    def num_ongoing(self) -> int:
        return max(self._local_ongoing, self._reported_ongoing)

    @property
    def multiplexed_model_ids(self) -> frozenset[str]:
        return self._model_ids

    @property
    def is_alive(self) -> bool:
        return self._dead_reason is None

    @property
    def node(self) -> ReplicaNode | None:
        info = self.info
        if info is None:
            return None
        return ReplicaNode(info.node_id, info.node_ip, info.hostname, info.pid,
                           dict(info.resources), list(info.gpu_ids))

    def mark_dead(self, reason: str) -> None:
        if self._dead_reason is None:
            self._dead_reason = reason
            log.warning("replica %s is gone: %s", self._replica_id, reason)

    def set_model_ids(self, model_ids: frozenset[str]) -> None:
        self._model_ids = model_ids

    # ---- requests ------------------------------------------------------------------
    async def call(self, meta: RequestMetadata, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        self._check_alive()
        self._local_ongoing += 1
        try:
            return await self._await(self.actor.call.remote(meta, args, kwargs))
        finally:
            self._local_ongoing -= 1

    async def stream(self, meta: RequestMetadata, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        self._check_alive()
        self._local_ongoing += 1
        gen = self.actor.stream.options(num_returns="streaming").remote(meta, args, kwargs)
        try:
            async for item in self._iterate(gen):
                yield item
        finally:
            self._local_ongoing -= 1

    async def handle_http(self, meta: RequestMetadata, scope: Scope, receive: Receive,
                          send: Send) -> None:
        if scope["type"] != "http":
            raise NotImplementedError("the Ray runtime serves HTTP, not websockets, for now")
        self._check_alive()
        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its request
        self._local_ongoing += 1
        plain = {k: scope[k] for k in SCOPE_KEYS if k in scope}
        plain["headers"] = [(bytes(k), bytes(v)) for k, v in scope["headers"]]
        gen = self.actor.handle_http.options(num_returns="streaming").remote(meta, plain, body)
        watcher = asyncio.get_running_loop().create_task(_wait_disconnect(receive))
        complete: list[bool] = [False]
        relay = asyncio.ensure_future(self._relay(gen, send, complete))
        try:
            await asyncio.wait({relay, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not relay.done() and not complete[0]:  # the client left: stop the work
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
                return
            await relay
        finally:
            watcher.cancel()
            if not relay.done():
                relay.cancel()
            self._local_ongoing -= 1

    async def _relay(self, gen: Any, send: Send, complete: list[bool]) -> None:
        async for batch in self._iterate(gen):
            for message in batch:
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    complete[0] = True

    async def check_health(self) -> None:
        await self._await(self.actor.check_health.remote(), during="a health check")

    async def reconfigure(self, user_config: Any) -> None:
        await self._await(self.actor.reconfigure.remote(user_config), during="reconfigure")

    # ---- stats and death (the runtime's refs only) ---------------------------------
    def start_watch(self) -> None:
        self._watch_task = asyncio.get_running_loop().create_task(self._watch())

    def stop_watch(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()

    async def _watch(self) -> None:
        """Long-poll the actor's stats; a pending poll fails the moment the actor dies."""
        import ray

        known: tuple[int, frozenset[str]] | None = None
        while self.is_alive:
            try:
                known = await self.actor.stats.remote(known, STATS_TIMEOUT_S)
            except ray.exceptions.RayActorError as exc:
                self.mark_dead(f"actor died: {_first_line(exc)}")
                return
            except Exception as exc:  # a replica bug should not stop the watch
                log.warning("stats of replica %s failed: %r", self._replica_id, exc)
                await asyncio.sleep(STATS_TIMEOUT_S)
                continue
            self._reported_ongoing, self._model_ids = known
            await asyncio.sleep(STATS_MIN_INTERVAL_S)

    # ---- Ray plumbing --------------------------------------------------------------
    def _check_alive(self) -> None:
        if self._dead_reason is not None:
            raise ReplicaUnavailableError(
                f"replica {self._replica_id} is not running: {self._dead_reason}")

    async def _await(self, ref: Any, during: str = "the request") -> Any:
        import ray

        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)
            raise
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None
        except ray.exceptions.RayActorError as exc:
            raise self._died(exc, during) from None

    async def _iterate(self, gen: Any) -> AsyncIterator[Any]:
        import ray

        try:
            async for item_ref in gen:
                try:
                    item = await item_ref
                except ray.exceptions.RayTaskError as exc:
                    raise _cause(exc) from None
                except ray.exceptions.RayActorError as exc:
                    raise self._died(exc, "the stream") from None
                yield item
        except asyncio.CancelledError:
            ray.cancel(gen)
            raise
        except GeneratorExit:
            ray.cancel(gen)
            raise

    def _died(self, exc: BaseException, during: str) -> ReplicaDiedError:
        self.mark_dead(f"actor died: {_first_line(exc)}")
        return ReplicaDiedError(
            f"replica {self._replica_id} died during {during}: {_first_line(exc)}")


def _cause(exc: Any) -> BaseException:
    """The exception the replica raised, with its remote traceback as a note."""
    cause = getattr(exc, "cause", None)
    if not isinstance(cause, BaseException):
        return exc  # type: ignore[no-any-return]
    with contextlib.suppress(Exception):
        cause.add_note(f"raised in a Ray replica actor:\n{exc.traceback_str}")
    return cause


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _wait_disconnect(receive: Receive) -> Message:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return message
