"""Least loaded: the replica with the fewest running + waiting + in-flight requests.

Load is :func:`routing.load.replica_load`; ties are broken at random (injected rng), so
several routers with the same stale view do not all pick the same replica.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from routing.load import replica_load
from routing.policy import Candidate, RouteRequest, RoutingPolicy


class LeastLoadedPolicy(RoutingPolicy):
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        keyed = [(replica_load(c), self._rng.random(), c) for c in candidates]
        keyed.sort(key=lambda item: (item[0], item[1]))
        return [c for _, _, c in keyed]
