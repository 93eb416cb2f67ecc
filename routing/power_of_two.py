"""Power of two choices on in-flight count (Mitzenmacher): sample two, prefer the idler."""

from __future__ import annotations

import random
from collections.abc import Sequence

from routing.policy import Candidate, RouteRequest, RoutingPolicy


class PowerOfTwoPolicy(RoutingPolicy):
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        if len(candidates) <= 1:
            return list(candidates)
        first, second = self._rng.sample(range(len(candidates)), 2)
        pair = sorted((candidates[first], candidates[second]), key=lambda c: c.num_ongoing)
        rest = [c for i, c in enumerate(candidates) if i not in (first, second)]
        rest.sort(key=lambda c: c.num_ongoing)
        return pair + rest
