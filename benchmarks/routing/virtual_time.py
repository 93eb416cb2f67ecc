"""An asyncio event loop on simulated time: when nothing is ready, time jumps to the next timer.

Everything on it runs in one process with no network I/O (the simulator's engines, the
routers, the load), so a run takes the CPU time its Python code needs and its clock
(``loop.time()``) is the simulated one, whatever else the machine is doing. ``asyncio.sleep``,
``wait_for`` timeouts and ``call_later`` all read it.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class _JumpSelector(selectors.SelectSelector):
    """Polls real file descriptors without blocking (the loop's own wake-up pipe); a wait
    for ``timeout`` seconds instead moves the loop's clock forward by ``timeout``."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or self.loop is None:
            return ready
        if timeout is None:
            raise RuntimeError("simulated time: every task waits and no timer is set")
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpSelector()
        super().__init__(selector)
        selector.loop = self
        self._now_s = 0.0

    def time(self) -> float:
        return self._now_s

    def advance(self, delay_s: float) -> None:
        self._now_s += max(0.0, delay_s)


class LoopClock:
    """The simulator's :class:`~engines.sim.clock.Clock` on the running loop's time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def now(self) -> float:
        return self._loop.time()

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(max(0.0, delay_s))

    def to_wall_s(self, delay_s: float) -> float:
        return max(0.0, delay_s)


def run(main: Any) -> Any:
    """``asyncio.run`` on a :class:`VirtualTimeLoop`."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()
