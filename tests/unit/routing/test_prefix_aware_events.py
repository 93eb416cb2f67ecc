"""prefix_aware with an event-fed view of the replicas' caches."""

from __future__ import annotations

import random

import pytest

from routing import RouteRequest
from routing.kv_cache_view import ClusterCacheView
from routing.prefix_aware import PrefixAwarePolicy
from tests.unit.routing.fakes import ids, replica, replicas
from tests.unit.routing.test_kv_cache_view import engine_hashes

BS = 4


def tokens(*blocks: int) -> list[int]:
    return [b for b in blocks for _ in range(BS)]


def req(rid: str, *blocks: int) -> RouteRequest:
    return RouteRequest(rid, "m", prompt_token_ids=tuple(tokens(*blocks)))


def setup(live: tuple[str, ...] = ("r0", "r1", "r2")) -> tuple[PrefixAwarePolicy,
                                                               ClusterCacheView]:
    view = ClusterCacheView(BS)
    for rid in live:
        view.set_live(rid, True)
    policy = PrefixAwarePolicy(block_size=BS, rng=random.Random(0))
    policy.use_kv_view(view)
    return policy, view


def stored(view: ClusterCacheView, rid: str, *blocks: int) -> list[bytes]:
    toks = tokens(*blocks)
    hashes = engine_hashes(toks)
    view.store(rid, "m", None, hashes, toks, BS)
    return hashes


def route(p: PrefixAwarePolicy, request: RouteRequest, cands: list) -> str:  # type: ignore[type-arg]
    chosen = p.choose(request, cands)[0].replica_id
    p.on_routed(request, chosen)
    return chosen


def test_what_another_router_placed_is_found_through_the_events() -> None:
    policy, view = setup()
    stored(view, "r2", 1, 2, 3)  # sent there by some other ingress
    assert policy.choose(req("a", 1, 2, 3, 4), replicas(0, 0, 0))[0].replica_id == "r2"


def test_an_evicted_prefix_no_longer_attracts_its_requests() -> None:
    policy, view = setup()
    first = route(policy, req("a", 1, 2, 3), replicas(0, 0, 0))
    hashes = stored(view, first, 1, 2, 3)
    policy.on_first_token(req("a", 1, 2, 3), first)
    other = next(r for r in ("r0", "r1", "r2") if r != first)
    stored(view, other, 1, 2, 3)
    view.remove(first, hashes)  # evicted where the router sent it
    assert policy.choose(req("b", 1, 2, 3, 4), replicas(0, 0, 0))[0].replica_id == other


def test_a_prompt_in_flight_holds_its_prefix_until_the_engine_reports_it() -> None:
    policy, _ = setup()
    first = route(policy, req("a", 1, 2, 3), replicas(0, 0, 0))
    cands = [replica(r, 1 if r == first else 0) for r in ("r0", "r1", "r2")]
    assert route(policy, req("b", 1, 2, 3, 5), cands) == first
    found = policy.match(req("c", 1, 2, 3))
    assert found is not None and found.blocks == {first: 3}
    # after the first token (the engine's events are in) only the view counts: here the
    # engine reported nothing, so nothing is held
    policy.on_first_token(req("a", 1, 2, 3), first)
    policy.on_first_token(req("b", 1, 2, 3, 5), first)
    found = policy.match(req("d", 1, 2, 3))
    assert found is not None and found.blocks == {}


def test_a_new_prefix_goes_where_the_cache_is_least_crowded() -> None:
    policy, view = setup()
    stored(view, "r0", 1, 2, 3, 4)
    hashes = stored(view, "r1", 5)
    view.remove("r1", hashes)
    stored(view, "r1", 6)  # r1 holds 1 block, evicted 1 lately; r2 holds nothing
    assert ids(policy.choose(req("a", 9, 9), replicas(0, 0, 0))) == ["r2", "r1", "r0"]


def test_kv_usage_raises_the_pressure() -> None:
    policy, view = setup(("r0", "r1"))
    stored(view, "r0", 1)
    stored(view, "r1", 2)
    cands = [replica("r0", kv=0.9), replica("r1", kv=0.1)]
    assert ids(policy.choose(req("a", 9, 9), cands)) == ["r1", "r0"]


def test_replicas_without_events_keep_the_approximate_index() -> None:
    policy, view = setup(live=("r0",))
    first = route(policy, req("a", 1, 2, 3), [replica("r1"), replica("r2")])
    # r0 publishes events and holds nothing; the other replica is known by what was sent
    cands = [replica("r0"), replica(first, 1)]
    assert policy.choose(req("b", 1, 2, 3), cands)[0].replica_id == first
    # a broken subscription: r0 falls back to the approximate index, which knows nothing
    view.set_live("r0", False)
    assert policy.choose(req("c", 1, 2, 3), cands)[0].replica_id == first


def test_the_view_must_key_blocks_of_the_policys_size() -> None:
    policy = PrefixAwarePolicy(block_size=16)
    with pytest.raises(ValueError, match="16"):
        policy.use_kv_view(ClusterCacheView(32))


def test_a_prompt_without_token_ids_is_routed_by_the_approximate_index() -> None:
    policy, view = setup()
    stored(view, "r2", 1, 2, 3)
    text = RouteRequest("a", "m", prompt="x" * 3 * BS)  # characters: not the engine's blocks
    first = route(policy, text, replicas(0, 0, 0))
    found = policy.match(RouteRequest("b", "m", prompt="x" * 3 * BS))
    assert found is not None and found.blocks == {first: 3}
