"""Fake replicas for policy tests: candidates with given in-flight counts and engine stats."""

from __future__ import annotations

from routing import Candidate


def replica(rid: str, ongoing: int = 0, *, running: float = 0, waiting: float = 0,
            kv: float = 0.0, adapters: frozenset[str] = frozenset()) -> Candidate:
    stats = {"num_running": float(running), "num_waiting": float(waiting),
             "kv_cache_usage": kv}
    return Candidate(rid, ongoing, 0, adapters, stats)


def replicas(*ongoing: int) -> list[Candidate]:
    return [replica(f"r{i}", n) for i, n in enumerate(ongoing)]


def ids(ranked: list[Candidate]) -> list[str]:
    return [c.replica_id for c in ranked]
