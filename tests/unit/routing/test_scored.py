from __future__ import annotations

import random

import pytest

from routing import RouteRequest, make_policy
from routing.scored import ScoredPolicy
from tests.unit.routing.fakes import ids, replica

BS = 4


def only(**weights: float) -> ScoredPolicy:
    base = dict.fromkeys(("prefix", "queue", "running", "kv_usage", "session", "lora"), 0.0)
    return ScoredPolicy({**base, **weights}, block_size=BS, rng=random.Random(0))


def test_each_scorer_alone_picks_what_it_values() -> None:
    cands = [replica("a", 0, waiting=5, kv=0.1), replica("b", 4, waiting=0, kv=0.9),
             replica("c", 2, waiting=1, kv=0.5, adapters=frozenset({"l1"}))]
    plain = RouteRequest("q")
    assert only(queue=1).scores(plain, cands) == [0.0, 1.0, 0.8]
    # load = max(in flight, running + waiting): 5, 4, 2
    assert only(running=1).scores(plain, cands) == pytest.approx([0.0, 1 / 3, 1.0])
    assert only(kv_usage=1).scores(plain, cands) == pytest.approx([0.9, 0.1, 0.5])
    assert only(lora=1).scores(RouteRequest("q", lora_adapter="l1"), cands) == [0, 0, 1]
    assert only(lora=1).scores(plain, cands) == [0, 0, 0]
    assert ids(only(queue=1).choose(plain, cands)) == ["b", "c", "a"]


def test_prefix_scorer_is_the_matched_fraction() -> None:
    p = only(prefix=1)
    first = RouteRequest("1", prompt_token_ids=(1,) * BS * 4)
    p.on_routed(first, "a")
    probe = RouteRequest("2", prompt_token_ids=(1,) * BS * 2 + (2,) * BS * 2)
    assert p.scores(probe, [replica("a"), replica("b")]) == [0.5, 0.0]


def test_session_scorer_marks_one_replica_per_session() -> None:
    p = only(session=1)
    p.on_replicas_changed(["a", "b", "c"])
    cands = [replica("a"), replica("b"), replica("c")]
    scores = p.scores(RouteRequest("q", session_key="s"), cands)
    assert sorted(scores) == [0, 0, 1]
    assert p.scores(RouteRequest("q2", session_key="s"), cands) == scores


def test_weights_trade_prefix_against_load() -> None:
    request = RouteRequest("1", prompt_token_ids=(7,) * BS * 2)
    cands = [replica("a", 5, waiting=4), replica("b", 0)]
    prefix_heavy = ScoredPolicy({"prefix": 10}, block_size=BS, rng=random.Random(0))
    prefix_heavy.on_routed(request, "a")
    assert ids(prefix_heavy.choose(RouteRequest("2", prompt_token_ids=request.prompt_token_ids),
                                   cands))[0] == "a"
    load_heavy = ScoredPolicy({"prefix": 1}, block_size=BS, rng=random.Random(0))
    load_heavy.on_routed(request, "a")
    assert ids(load_heavy.choose(RouteRequest("2", prompt_token_ids=request.prompt_token_ids),
                                 cands))[0] == "b"


def test_unknown_scorer_and_prompt_flag() -> None:
    with pytest.raises(ValueError, match="unknown scorers"):
        ScoredPolicy({"nope": 1})
    assert make_policy("scored").needs_prompt
    assert not make_policy("scored", weights={"prefix": 0}).needs_prompt
