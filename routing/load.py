"""How busy a replica is, from what the router knows at decision time.

``Candidate.num_ongoing`` is the router's own in-flight count (exact, instant, but blind
to other routers); ``stats`` carries the engine's own ``num_running``/``num_waiting`` from
its ``/metrics`` (every router's traffic, but a refresh period old). The load is the
larger of the two, so a burst this router just sent counts at once and traffic from
other ingress processes counts as soon as the engine reports it.
"""

from __future__ import annotations

from collections.abc import Sequence

from routing.policy import Candidate


def replica_load(candidate: Candidate) -> float:
    stats = candidate.stats
    engine = stats.get("num_running", 0.0) + stats.get("num_waiting", 0.0)
    return max(float(candidate.num_ongoing), engine)


def queue_depth(candidate: Candidate) -> float:
    """Requests waiting for a slot on the engine (or, without stats, beyond its capacity)."""
    waiting = candidate.stats.get("num_waiting")
    if waiting is not None:
        return waiting
    if candidate.max_ongoing > 0:
        return float(max(0, candidate.num_ongoing - candidate.max_ongoing))
    return 0.0


def least_loaded_first(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates by load, then in-flight count, then id (a stable, total order)."""
    return sorted(candidates, key=lambda c: (replica_load(c), c.num_ongoing, c.replica_id))


def is_overloaded(load: float, min_load: float, abs_threshold: float,
                  rel_threshold: float) -> bool:
    """True when ``load`` exceeds the least-loaded replica's by both thresholds."""
    return load - min_load > abs_threshold and load > min_load * rel_threshold
