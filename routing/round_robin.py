"""Round-robin: each request starts one replica further along the ring."""

from __future__ import annotations

from collections.abc import Sequence

from routing.policy import Candidate, RouteRequest, RoutingPolicy


class RoundRobinPolicy(RoutingPolicy):
    def __init__(self) -> None:
        self._next = 0

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        if not candidates:
            return []
        ordered = sorted(candidates, key=lambda c: c.replica_id)
        start = self._next % len(ordered)
        self._next += 1
        return ordered[start:] + ordered[:start]
