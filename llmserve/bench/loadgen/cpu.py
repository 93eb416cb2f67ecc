"""The load generator's own CPU use, so a run where the client saturated is not published."""

from __future__ import annotations

import time
from typing import Protocol

MAX_CLIENT_CPU_UTIL = 0.9  # of one core


class CpuMeter(Protocol):
    """``start()`` then ``stop()`` -> CPU seconds used in between."""

    def start(self) -> None: ...

    def stop(self) -> float: ...


class ThreadCpuMeter:
    """CPU time of the calling thread: the load generator runs its loop on its own thread,
    so simulators or gateways sharing the process are not counted against it."""

    def __init__(self) -> None:
        self._started = 0.0

    def start(self) -> None:
        self._started = time.thread_time()

    def stop(self) -> float:
        return time.thread_time() - self._started


class FixedCpuMeter:
    """Reports a fixed number of CPU seconds (tests inject a saturated client with it)."""

    def __init__(self, cpu_s: float) -> None:
        self.cpu_s = cpu_s

    def start(self) -> None:
        return None

    def stop(self) -> float:
        return self.cpu_s
