"""Which adapters one engine replica holds, and loading more into it.

At most ``capacity`` adapters are resident; a new one evicts the least recently used
adapter that no in-flight request uses (when every resident adapter is in use, the load
waits for one to finish). Loads are single-flight: concurrent first requests for an
adapter share one load, and its failure is raised to each of them. A replica whose
engine restarts gets a new :class:`ReplicaAdapters`, with nothing resident.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from llmserve.lora.errors import AdapterUnavailable

Load = Callable[[], Awaitable[None]]
Unload = Callable[[str], Awaitable[None]]
Evicted = Callable[[str], None]


class ReplicaAdapters:
    def __init__(self) -> None:
        self._resident: OrderedDict[str, None] = OrderedDict()
        self._in_flight: dict[str, int] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._claimed = 0  # slots held by loads under way (room made, not yet resident)
        self._released = asyncio.Event()

    @property
    def resident(self) -> frozenset[str]:
        return frozenset(self._resident)

    def in_flight(self, name: str) -> int:
        return self._in_flight.get(name, 0)

    async def acquire(self, name: str, capacity: int, load: Load, unload: Unload,
                      *, wait_s: float, on_evict: Evicted | None = None) -> bool:
        """Make ``name`` resident and count one request using it; True if this call
        waited for a load (a miss), False if it was resident already (a hit)."""
        # counted as in use from now on, so the adapter is not evicted between its load
        # and this request's turn to run
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        missed = False
        try:
            while name not in self._resident:
                missed = True
                task = self._loading.get(name)
                if task is None:
                    task = asyncio.get_running_loop().create_task(
                        self._load(name, capacity, load, unload, wait_s, on_evict))
                    self._loading[name] = task
                await asyncio.shield(task)  # a cancelled waiter leaves the load running
        except BaseException:
            self.release(name)
            raise
        self._resident.move_to_end(name)
        return missed

    def release(self, name: str) -> None:
        left = self._in_flight.get(name, 0) - 1
        if left > 0:
            self._in_flight[name] = left
            return
        self._in_flight.pop(name, None)
        self._released.set()

    def forget(self, name: str) -> None:
        """The engine no longer has ``name`` (it answered 404 for it)."""
        self._resident.pop(name, None)

    async def _load(self, name: str, capacity: int, load: Load, unload: Unload,
                    wait_s: float, on_evict: Evicted | None) -> None:
        try:
            await self._make_room(capacity, unload, wait_s, on_evict)
            self._claimed += 1
            try:
                await load()
                self._resident[name] = None
            finally:
                self._claimed -= 1
                self._released.set()  # a failed load frees its slot
        finally:
            self._loading.pop(name, None)

    async def _make_room(self, capacity: int, unload: Unload, wait_s: float,
                         on_evict: Evicted | None) -> None:
        deadline = asyncio.get_running_loop().time() + wait_s
        while len(self._resident) + self._claimed >= capacity:
            victim = next((n for n in self._resident if not self._in_flight.get(n)), None)
            if victim is None:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise AdapterUnavailable(
                        f"all {capacity} adapter slots of the replica are in use",
                        retry_after_s=1.0)
                self._released.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), left)
                continue
            del self._resident[victim]
            if on_evict is not None:
                on_evict(victim)
            await unload(victim)
