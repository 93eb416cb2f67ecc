"""The prefix-aware policy explains each decision (hit, miss, spill and its guard)."""

from __future__ import annotations

import random

from routing import RouteRequest
from routing.decision import depth_bucket
from routing.prefix_aware import PrefixAwarePolicy
from tests.unit.routing.fakes import replica

BS = 4


def req(rid: str, *blocks: int) -> RouteRequest:
    return RouteRequest(rid, "m", prompt_token_ids=tuple(b for b in blocks for _ in range(BS)))


def test_miss_then_hit_then_spill_by_the_load_guard() -> None:
    p = PrefixAwarePolicy(block_size=BS, rng=random.Random(0), balance_abs_threshold=4,
                          balance_rel_threshold=1.5)
    p.choose(req("1", 1, 2), [replica("a"), replica("b")])
    assert p.last_decision is not None and p.last_decision.outcome == "miss"
    p.on_routed(req("1", 1, 2), "a")
    p.choose(req("2", 1, 2), [replica("a", 1), replica("b")])
    assert p.last_decision is not None
    assert (p.last_decision.outcome, p.last_decision.matched_tokens) == ("hit", 2 * BS)
    p.choose(req("3", 1, 2), [replica("a", 20), replica("b", 0)])
    assert p.last_decision is not None
    assert (p.last_decision.outcome, p.last_decision.guard) == ("spill", "load")


def test_spill_by_the_share_guard() -> None:
    p = PrefixAwarePolicy(block_size=BS, rng=random.Random(0), share_bound=1.0, share_min=1)
    outcomes = []
    for i in range(6):  # one shared prefix while the cluster is busy
        request = req(str(i), 7, 8)
        chosen = p.choose(request, [replica("a", 1), replica("b", 1)])[0].replica_id
        assert p.last_decision is not None
        outcomes.append((p.last_decision.outcome, p.last_decision.guard))
        p.on_routed(request, chosen)
        p.on_first_token(request, chosen)
    assert outcomes[:3] == [("miss", "none"), ("hit", "none"), ("spill", "share")]


def test_depth_buckets_are_a_fixed_set() -> None:
    assert [depth_bucket(n) for n in (0, 1, 255, 256, 1023, 1024, 4095, 4096, 10**9)] == [
        "0", "1-255", "1-255", "256-1023", "256-1023", "1024-4095", "1024-4095", "4096+",
        "4096+"]
