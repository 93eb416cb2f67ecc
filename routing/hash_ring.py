"""Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018).

Each replica owns ``virtual_nodes`` points on a 64-bit ring. A key goes to the first
replica clockwise from its hash whose load is below ``ceil((1 + epsilon) * mean)``,
where the mean counts the request being placed. So a key keeps its replica while that
replica is not overloaded, only ~1/n of the keys move when a replica joins or leaves,
and no replica takes more than (1 + epsilon) times its share.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Mapping


def stable_hash64(text: str) -> int:
    """A hash that is the same in every process (Python's ``hash(str)`` is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, replica_ids: Iterable[str] = (), virtual_nodes: int = 64) -> None:
        self.virtual_nodes = virtual_nodes
        self._points: list[int] = []
        self._owners: list[str] = []
        self._num_replicas = 0
        self.set_replicas(replica_ids)

    @property
    def replica_ids(self) -> set[str]:
        return set(self._owners)

    def set_replicas(self, replica_ids: Iterable[str]) -> None:
        points = sorted(
            (stable_hash64(f"{rid}#{i}"), rid)
            for rid in set(replica_ids) for i in range(self.virtual_nodes)
        )
        self._points = [p for p, _ in points]
        self._owners = [rid for _, rid in points]
        self._num_replicas = len(set(self._owners))

    def add(self, replica_ids: Iterable[str]) -> None:
        """Add replicas not on the ring yet (no-op when all are there)."""
        missing = set(replica_ids) - set(self._owners)
        if missing:
            self.set_replicas(set(self._owners) | missing)

    def walk(self, key: str) -> list[str]:
        """Distinct replicas in ring order starting at ``key``'s position."""
        if not self._points:
            return []
        start = bisect.bisect(self._points, stable_hash64(key)) % len(self._points)
        seen: dict[str, None] = {}
        total = len(self._owners)
        for offset in range(total):
            seen.setdefault(self._owners[(start + offset) % total], None)
            if len(seen) == self._num_replicas:
                break
        return list(seen)

    def place(self, key: str, loads: Mapping[str, float], epsilon: float,
              allowed: Iterable[str] | None = None) -> str | None:
        """The first replica from ``key`` (among ``allowed``) under the load bound."""
        allowed_set = set(loads if allowed is None else allowed)
        order = [rid for rid in self.walk(key) if rid in allowed_set]
        if not order:
            return None
        bound = load_bound(sum(loads.get(r, 0.0) for r in order), len(order), epsilon)
        for rid in order:
            if loads.get(rid, 0.0) < bound:
                return rid
        return order[0]


def load_bound(total_load: float, num_replicas: int, epsilon: float) -> float:
    """Capacity of each replica when placing one more request: ceil((1+eps) * mean)."""
    return math.ceil((1 + epsilon) * (total_load + 1) / max(1, num_replicas))
