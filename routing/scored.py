"""Weighted scorers, like llm-d's inference scheduler: the highest total score wins.

Each scorer gives every candidate a score in [0, 1]; the policy ranks by
``sum(weight * score)`` (ties at random). Scorers:

- ``prefix``: fraction of the prompt's blocks the replica holds (:mod:`routing.prefix_aware`'s
  index, recorded on ``on_routed``);
- ``queue``: fewer waiting requests is better, min-max normalised over the candidates;
- ``running``: fewer running/in-flight requests is better, min-max normalised;
- ``kv_usage``: ``1 - kv_cache_usage`` from the engine's metrics;
- ``session``: 1 for the replica the session's key maps to on a consistent-hash ring with
  bounded loads (:mod:`routing.hash_ring`);
- ``lora``: 1 where the requested LoRA adapter is already loaded (``Candidate.model_ids``);
  where it is loaded nowhere, up to 0.5 for the replicas holding the fewest adapters (a load
  costs least there), min-max normalised.

A weight of 0 turns a scorer off. Weights are configurable by name:
``{"policy": "scored", "weights": {"prefix": 3, "queue": 2, ...}}``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from routing.block_hash import HashFn
from routing.hash_ring import HashRing
from routing.load import queue_depth, replica_load
from routing.policy import Candidate, RouteRequest, RoutingPolicy
from routing.prefix_aware import PrefixAwarePolicy, PrefixMatch

DEFAULT_WEIGHTS: dict[str, float] = {
    "prefix": 3.0, "queue": 2.0, "running": 1.0, "kv_usage": 2.0, "session": 1.0, "lora": 1.0,
}


@dataclass(frozen=True)
class ScoreContext:
    request: RouteRequest
    candidates: Sequence[Candidate]
    match: PrefixMatch | None
    session_replica: str | None


Scorer = Callable[[ScoreContext], list[float]]


def _lower_is_better(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    if high <= low:
        return [1.0] * len(values)
    return [(high - v) / (high - low) for v in values]


def prefix_score(ctx: ScoreContext) -> list[float]:
    if ctx.match is None or not ctx.match.hashes:
        return [0.0] * len(ctx.candidates)
    total = len(ctx.match.hashes)
    return [ctx.match.blocks.get(c.replica_id, 0) / total for c in ctx.candidates]


def queue_score(ctx: ScoreContext) -> list[float]:
    return _lower_is_better([queue_depth(c) for c in ctx.candidates])


def running_score(ctx: ScoreContext) -> list[float]:
    return _lower_is_better([replica_load(c) for c in ctx.candidates])


def kv_usage_score(ctx: ScoreContext) -> list[float]:
    return [1.0 - min(1.0, max(0.0, c.stats.get("kv_cache_usage", 0.0)))
            for c in ctx.candidates]


def session_score(ctx: ScoreContext) -> list[float]:
    return [1.0 if c.replica_id == ctx.session_replica else 0.0 for c in ctx.candidates]


def lora_score(ctx: ScoreContext) -> list[float]:
    adapter = ctx.request.lora_adapter
    if not adapter:
        return [0.0] * len(ctx.candidates)
    if any(adapter in c.model_ids for c in ctx.candidates):
        return [1.0 if adapter in c.model_ids else 0.0 for c in ctx.candidates]
    return [0.5 * s for s in _lower_is_better([len(c.model_ids) for c in ctx.candidates])]


SCORERS: dict[str, Scorer] = {
    "prefix": prefix_score, "queue": queue_score, "running": running_score,
    "kv_usage": kv_usage_score, "session": session_score, "lora": lora_score,
}


class ScoredPolicy(RoutingPolicy):
    def __init__(self, weights: Mapping[str, float] | None = None, block_size: int = 16,
                 max_index_bytes: int = 64 * 1024 * 1024, session_epsilon: float = 0.25,
                 rng: random.Random | None = None, hash_fn: HashFn | None = None) -> None:
        unknown = sorted(set(weights or {}) - set(SCORERS))
        if unknown:
            raise ValueError(f"unknown scorers {unknown}; known: {sorted(SCORERS)}")
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.session_epsilon = session_epsilon
        self._rng = rng or random.Random()
        self.prefix = PrefixAwarePolicy(block_size, max_index_bytes, rng=self._rng,
                                        hash_fn=hash_fn, min_match_ratio=0.0)
        self.ring = HashRing()
        self.needs_prompt = bool(self.weights["prefix"])
        self.block_size = block_size

    def scores(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[float]:
        """The weighted total of each candidate, in the candidates' order."""
        match = self.prefix.match(request) if self.weights["prefix"] else None
        session_replica = None
        if self.weights["session"] and request.session_key is not None:
            self.ring.add(c.replica_id for c in candidates)
            loads = {c.replica_id: replica_load(c) for c in candidates}
            session_replica = self.ring.place(request.session_key, loads, self.session_epsilon)
        ctx = ScoreContext(request, candidates, match, session_replica)
        totals = [0.0] * len(candidates)
        for name, weight in self.weights.items():
            if weight:
                for i, score in enumerate(SCORERS[name](ctx)):
                    totals[i] += weight * score
        return totals

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        totals = self.scores(request, candidates)
        keyed = sorted(zip(totals, candidates, strict=True),
                       key=lambda item: (-item[0], self._rng.random()))
        return [c for _, c in keyed]

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        if self.weights["prefix"]:
            self.prefix.on_routed(request, replica_id)

    def on_replicas_changed(self, replica_ids: Sequence[str]) -> None:
        self.prefix.on_replicas_changed(replica_ids)
        self.ring.set_replicas(replica_ids)
