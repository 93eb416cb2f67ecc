"""`@serve.multiplexed`: a per-replica LRU of loaded models keyed by model id."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from llmserve.serve.exceptions import ConfigError

_CACHE_ATTR = "__llmserve_model_cache__"


class ModelCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.models: OrderedDict[str, Any] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Any]] = {}

    async def get(self, model_id: str, load: Callable[[], Awaitable[Any]]) -> Any:
        if model_id in self.models:
            self.models.move_to_end(model_id)
            return self.models[model_id]
        if model_id in self._loading:
            return await asyncio.shield(self._loading[model_id])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[model_id] = future
        try:
            while len(self.models) >= self.capacity:
                await self._evict_oldest()
            model = await load()
            self.models[model_id] = model
            future.set_result(model)
            return model
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters get it, nobody else logs it
            raise
        finally:
            del self._loading[model_id]

    async def _evict_oldest(self) -> None:
        _, model = self.models.popitem(last=False)
        cleanup = getattr(model, "__del__", None)
        if cleanup is None:
            return
        if inspect.iscoroutinefunction(cleanup):
            await cleanup()
        else:
            await asyncio.get_running_loop().run_in_executor(None, cleanup)
        with contextlib.suppress(AttributeError):
            model.__del__ = lambda: None  # do not run cleanup a second time at collection


def loaded_model_ids(owner: Any) -> frozenset[str]:
    """Model ids the replica instance (or function) currently holds."""
    caches = getattr(owner, "__dict__", {}).get(_CACHE_ATTR)
    if not caches:
        return frozenset()
    return frozenset(mid for cache in caches.values() for mid in cache.models)


def multiplexed(
    _func: Any = None, *, max_num_models_per_replica: int = 3
) -> Any:
    """Decorate an async ``get_model(self, model_id)`` loader with a per-replica LRU."""
    if max_num_models_per_replica < 1:
        raise ConfigError("max_num_models_per_replica must be >= 1")

    def wrap(loader: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        if not inspect.iscoroutinefunction(loader):
            raise ConfigError("@serve.multiplexed goes on an async model loader")
        is_method = next(iter(inspect.signature(loader).parameters), "") == "self"

        @functools.wraps(loader)
        async def load(*args: Any) -> Any:
            owner = args[0] if is_method else load
            model_id = args[-1]
            if not isinstance(model_id, str) or not model_id:
                raise ValueError("the multiplexed model id must be a non-empty string")
            caches = owner.__dict__.setdefault(_CACHE_ATTR, {})
            cache = caches.setdefault(loader.__name__, ModelCache(max_num_models_per_replica))
            return await cache.get(model_id, lambda: loader(*args))

        return load

    if _func is not None:
        return wrap(_func)
    return wrap
