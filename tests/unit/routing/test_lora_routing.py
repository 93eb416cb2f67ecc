"""Adapter residency in prefix_aware and scored, and prefix matching per adapter."""

from __future__ import annotations

import random

from routing import RouteRequest
from routing.prefix_aware import PrefixAwarePolicy
from routing.scored import ScoredPolicy
from tests.unit.routing.fakes import ids, replica

PROMPT = tuple(range(64))  # four blocks of 16


def request(rid: str, adapter: str | None, tokens: tuple[int, ...] = PROMPT) -> RouteRequest:
    return RouteRequest(rid, "m", prompt_token_ids=tokens, lora_adapter=adapter)


def policy() -> PrefixAwarePolicy:
    return PrefixAwarePolicy(block_size=16, share_window=0, rng=random.Random(0))


def test_resident_adapter_wins_over_a_less_loaded_replica() -> None:
    candidates = [replica("a", 0), replica("b", 3, adapters=frozenset({"x"})),
                  replica("c", 1)]
    assert ids(policy().choose(request("1", "x"), candidates)) == ["b", "a", "c"]


def test_cold_adapter_goes_where_fewest_adapters_are_resident_then_least_load() -> None:
    candidates = [replica("a", 0, adapters=frozenset({"p", "q"})),
                  replica("b", 2, adapters=frozenset({"p"})),
                  replica("c", 1, adapters=frozenset({"q"}))]
    assert ids(policy().choose(request("1", "x"), candidates)) == ["c", "b", "a"]


def test_residency_is_bounded_by_the_load_guard() -> None:
    # b holds x but queues 100 requests more than a: past balance_abs_threshold (64) and
    # balance_rel_threshold (1.5x), so it is full and ranks last
    candidates = [replica("a", 0), replica("b", 100, adapters=frozenset({"x"}))]
    assert ids(policy().choose(request("1", "x"), candidates)) == ["a", "b"]


def test_base_model_requests_ignore_residency() -> None:
    candidates = [replica("a", 2, adapters=frozenset({"x"})), replica("b", 1)]
    assert ids(policy().choose(request("1", None), candidates)) == ["b", "a"]


def test_prefix_cached_under_one_adapter_is_no_hit_for_another_or_the_base() -> None:
    routed = policy()
    candidates = [replica("a", 0), replica("b", 0)]
    first = request("1", "x")
    routed.choose(first, candidates)
    routed.on_routed(first, "b")
    assert routed.match(request("2", "x")).blocks == {"b": 4}
    assert routed.match(request("3", "y")).blocks == {}
    assert routed.match(request("4", None)).blocks == {}
    base = request("5", None)
    routed.on_routed(base, "a")
    assert routed.match(request("6", None)).blocks == {"a": 4}
    assert routed.match(request("7", "x")).blocks == {"b": 4}


def test_scored_prefers_resident_then_fewest_adapters_for_a_cold_one() -> None:
    scored = ScoredPolicy(weights={"prefix": 0, "queue": 0, "running": 0, "kv_usage": 0,
                                   "session": 0, "lora": 1}, rng=random.Random(0))
    held = [replica("a", adapters=frozenset({"x", "y"})), replica("b"),
            replica("c", adapters=frozenset({"y"}))]
    assert scored.scores(request("1", "x"), held) == [1.0, 0.0, 0.0]
    assert scored.scores(request("2", "z"), held) == [0.0, 0.5, 0.25]
    assert ids(scored.choose(request("3", "z"), held)) == ["b", "c", "a"]
