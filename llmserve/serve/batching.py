"""`@serve.batch`: callers pass one item, the method receives a list.

Batches never mix multiplexed model ids. A streaming batch method yields lists (one
element per caller); a ``StopIteration`` element ends that caller's stream early.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from llmserve.serve.context import (
    RequestMetadata,
    get_multiplexed_model_id,
    get_request_metadata,
    set_request_metadata,
)
from llmserve.serve.exceptions import ConfigError

_QUEUES_ATTR = "__llmserve_batch_queues__"
_END = object()


@dataclass
class _Item:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    model_id: str
    future: asyncio.Future[Any] | None = None
    stream: asyncio.Queue[Any] | None = None

    @property
    def is_abandoned(self) -> bool:
        return self.future is not None and self.future.done()


@dataclass
class BatchQueue:
    fn: Callable[..., Any]
    max_batch_size: int
    wait_timeout_s: float
    is_stream: bool
    pending: deque[_Item] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None

    def put(self, item: _Item) -> None:
        self.pending.append(item)
        self.arrived.set()
        if self.runner is None or self.runner.done():
            self.runner = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.pending:
            batch = await self._collect()
            if batch:
                await self._process(batch)

    async def _collect(self) -> list[_Item]:
        model_id = self.pending[0].model_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout_s
        while self._count(model_id) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                break
        batch: list[_Item] = []
        kept: deque[_Item] = deque()
        for item in self.pending:
            if item.model_id == model_id and len(batch) < self.max_batch_size:
                if not item.is_abandoned:
                    batch.append(item)
            else:
                kept.append(item)
        self.pending = kept
        return batch

    def _count(self, model_id: str) -> int:
        return sum(1 for item in self.pending if item.model_id == model_id)

    def _call_args(self, owner: Any, batch: list[_Item]) -> tuple[list[Any], dict[str, Any]]:
        num_args = len(batch[0].args)
        args = [[item.args[i] for item in batch] for i in range(num_args)]
        kwargs = {key: [item.kwargs[key] for item in batch] for key in batch[0].kwargs}
        return ([owner, *args] if owner is not None else args), kwargs

    async def _process(self, batch: list[_Item]) -> None:
        meta = get_request_metadata() or RequestMetadata(request_id="batch")
        set_request_metadata(dataclasses.replace(meta, multiplexed_model_id=batch[0].model_id))
        owner = batch[0].args[0] if self._is_method else None
        for item in batch:
            if self._is_method:
                item.args = item.args[1:]
        args, kwargs = self._call_args(owner, batch)
        if self.is_stream:
            await self._process_stream(batch, args, kwargs)
        else:
            await self._process_once(batch, args, kwargs)

    @functools.cached_property
    def _is_method(self) -> bool:
        return next(iter(inspect.signature(self.fn).parameters), "") == "self"

    async def _process_once(self, batch: list[_Item], args: list[Any],
                            kwargs: dict[str, Any]) -> None:
        try:
            results = await self.fn(*args, **kwargs)
            if not isinstance(results, list | tuple) or len(results) != len(batch):
                raise TypeError(
                    f"@serve.batch method {self.fn.__name__} must return a list of "
                    f"{len(batch)} results (one per caller), got {type(results).__name__}"
                )
        except Exception as exc:
            for item in batch:
                _settle(item.future, exc)
            return
        for item, result in zip(batch, results, strict=True):
            _settle(item.future, result)

    async def _process_stream(self, batch: list[_Item], args: list[Any],
                              kwargs: dict[str, Any]) -> None:
        open_items = list(batch)
        try:
            async for results in self.fn(*args, **kwargs):
                if len(results) != len(batch):
                    raise TypeError("a streaming @serve.batch method must yield one "
                                    f"element per caller ({len(batch)})")
                for item, result in zip(batch, results, strict=True):
                    if item not in open_items:
                        continue
                    if result is StopIteration or isinstance(result, StopIteration):
                        open_items.remove(item)
                        item.stream.put_nowait(_END)  # type: ignore[union-attr]
                    else:
                        item.stream.put_nowait(result)  # type: ignore[union-attr]
        except Exception as exc:
            for item in open_items:
                item.stream.put_nowait(exc)  # type: ignore[union-attr]
            return
        for item in open_items:
            item.stream.put_nowait(_END)  # type: ignore[union-attr]


def _settle(future: asyncio.Future[Any] | None, result: Any) -> None:
    if future is None or future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def batch(
    _func: Any = None, *, max_batch_size: int = 10, batch_wait_timeout_s: float = 0.01
) -> Any:
    """Batch concurrent calls of an async method (or function) into one call."""
    if max_batch_size < 1:
        raise ConfigError("max_batch_size must be >= 1")
    if batch_wait_timeout_s < 0:
        raise ConfigError("batch_wait_timeout_s must be >= 0")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        is_stream = inspect.isasyncgenfunction(fn)
        if not (is_stream or inspect.iscoroutinefunction(fn)):
            raise ConfigError("@serve.batch goes on an async method or async generator")
        is_method = next(iter(inspect.signature(fn).parameters), "") == "self"
        shared: dict[str, BatchQueue] = {}

        def queue_for(args: tuple[Any, ...]) -> BatchQueue:
            queues: dict[str, BatchQueue] = (
                args[0].__dict__.setdefault(_QUEUES_ATTR, {}) if is_method else shared
            )
            if fn.__name__ not in queues:
                queues[fn.__name__] = BatchQueue(fn, max_batch_size, batch_wait_timeout_s,
                                                 is_stream)
            return queues[fn.__name__]

        if is_stream:
            @functools.wraps(fn)
            async def stream_one(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                results: asyncio.Queue[Any] = asyncio.Queue()
                queue_for(args).put(_Item(args, kwargs, get_multiplexed_model_id(),
                                          stream=results))
                while True:
                    item = await results.get()
                    if item is _END:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    yield item

            return stream_one

        @functools.wraps(fn)
        async def call_one(*args: Any, **kwargs: Any) -> Any:
            future = asyncio.get_running_loop().create_future()
            queue_for(args).put(_Item(args, kwargs, get_multiplexed_model_id(), future=future))
            return await future

        return call_one

    if _func is not None:
        return wrap(_func)
    return wrap
