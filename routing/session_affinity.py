"""Session affinity: one conversation stays on one replica, within bounded loads.

The session key (the ingress takes it from ``x-session-id``, else ``prompt_cache_key``,
else ``user``) is placed on a consistent-hash ring with bounded loads
(:mod:`routing.hash_ring`): a session keeps its replica while that replica carries no
more than ``(1 + epsilon)`` times the mean load, and sessions stay put when other
replicas come and go. Requests without a key go to the least-loaded replica.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from routing.hash_ring import HashRing
from routing.least_loaded import LeastLoadedPolicy
from routing.load import replica_load
from routing.policy import Candidate, RouteRequest, RoutingPolicy


class SessionAffinityPolicy(RoutingPolicy):
    def __init__(self, epsilon: float = 0.25, virtual_nodes: int = 64,
                 rng: random.Random | None = None) -> None:
        self.epsilon = epsilon
        self.ring = HashRing(virtual_nodes=virtual_nodes)
        self._fallback = LeastLoadedPolicy(rng)

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        ranked = self._fallback.choose(request, candidates)
        if request.session_key is None or len(candidates) <= 1:
            return ranked
        self.ring.add(c.replica_id for c in candidates)
        loads = {c.replica_id: replica_load(c) for c in candidates}
        chosen = self.ring.place(request.session_key, loads, self.epsilon)
        return sorted(ranked, key=lambda c: c.replica_id != chosen)

    def on_replicas_changed(self, replica_ids: Sequence[str]) -> None:
        self.ring.set_replicas(replica_ids)
