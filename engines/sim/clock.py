"""Simulated time: a real clock that can run faster than wall time, and a fake one for tests."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Simulated seconds. ``sleep`` waits until ``now()`` has advanced by ``delay_s``."""

    def now(self) -> float: ...

    async def sleep(self, delay_s: float) -> None: ...

    def to_wall_s(self, delay_s: float) -> float:
        """Wall-clock seconds that ``delay_s`` simulated seconds take."""
        ...


class ScaledClock:
    """Monotonic wall time multiplied by ``time_scale`` (10 runs ten times faster)."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.time_scale = time_scale
        self._start_wall_s = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._start_wall_s) * self.time_scale

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(self.to_wall_s(delay_s))

    def to_wall_s(self, delay_s: float) -> float:
        return max(0.0, delay_s) / self.time_scale


class FakeClock:
    """Time moves only when someone sleeps on it or calls :meth:`advance`."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = start_s

    def now(self) -> float:
        return self._now_s

    def advance(self, delay_s: float) -> None:
        self._now_s += max(0.0, delay_s)

    async def sleep(self, delay_s: float) -> None:
        self.advance(delay_s)
        await asyncio.sleep(0)

    def to_wall_s(self, delay_s: float) -> float:
        return 0.0
