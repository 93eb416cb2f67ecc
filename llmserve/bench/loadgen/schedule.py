"""When each session starts: Poisson arrivals, trace timestamps, or all at once."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from llmserve.bench.workloads.base import Session


def poisson_arrivals(count: int, rate_per_s: float, seed: int) -> list[float]:
    """Start times (s) of ``count`` arrivals of a Poisson process; the first at 0."""
    if rate_per_s <= 0 or math.isinf(rate_per_s):
        return [0.0] * count
    rng = random.Random(seed)
    times, now = [], 0.0
    for index in range(count):
        if index:
            now += rng.expovariate(rate_per_s)
        times.append(now)
    return times


def arrival_times(sessions: Sequence[Session], qps: float | None, seed: int) -> list[float]:
    """Trace timestamps when every session has one, else Poisson at ``qps`` (simulated s)."""
    if sessions and all(s.arrival_s is not None for s in sessions):
        first = min(float(s.arrival_s or 0.0) for s in sessions)
        return [float(s.arrival_s or 0.0) - first for s in sessions]
    return poisson_arrivals(len(sessions), qps if qps is not None else math.inf, seed)
