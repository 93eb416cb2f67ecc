from __future__ import annotations

import random

import pytest

from routing import Candidate, RouteRequest, available_policies, make_policy
from routing.power_of_two import PowerOfTwoPolicy
from routing.round_robin import RoundRobinPolicy

REQ = RouteRequest("r1")


def cands(*ongoing: int) -> list[Candidate]:
    return [Candidate(f"r{i}", n, 10) for i, n in enumerate(ongoing)]


def test_round_robin_rotates_through_replicas_in_id_order() -> None:
    policy = RoundRobinPolicy()
    firsts = [policy.choose(REQ, cands(0, 0, 0))[0].replica_id for _ in range(5)]
    assert firsts == ["r0", "r1", "r2", "r0", "r1"]
    ranked = policy.choose(REQ, cands(0, 0, 0))
    assert [c.replica_id for c in ranked] == ["r2", "r0", "r1"]


def test_round_robin_empty() -> None:
    assert RoundRobinPolicy().choose(REQ, []) == []


def test_power_of_two_prefers_less_loaded_of_the_sampled_pair() -> None:
    rng = random.Random(7)
    first, second = random.Random(7).sample(range(4), 2)
    loads = [5, 1, 3, 0]
    ranked = PowerOfTwoPolicy(rng).choose(REQ, cands(*loads))
    pair = sorted([first, second], key=lambda i: loads[i])
    assert [c.replica_id for c in ranked[:2]] == [f"r{i}" for i in pair]
    assert sorted(c.replica_id for c in ranked) == ["r0", "r1", "r2", "r3"]
    rest = ranked[2:]
    assert [c.num_ongoing for c in rest] == sorted(c.num_ongoing for c in rest)


def test_power_of_two_spreads_load_better_than_chance() -> None:
    policy = PowerOfTwoPolicy(random.Random(0))
    loads = [0] * 8
    for _ in range(800):
        choice = policy.choose(REQ, cands(*loads))[0]
        loads[int(choice.replica_id[1:])] += 1
    assert max(loads) - min(loads) <= 2


def test_single_candidate_is_returned() -> None:
    only = cands(3)
    assert PowerOfTwoPolicy().choose(REQ, only) == only


def test_registry_knows_builtin_policies_and_rejects_unknown() -> None:
    assert {"round_robin", "power_of_two"} <= set(available_policies())
    assert isinstance(make_policy("round_robin"), RoundRobinPolicy)
    assert isinstance(make_policy("routing.round_robin:RoundRobinPolicy"), RoundRobinPolicy)
    with pytest.raises(ValueError, match="unknown routing policy 'nope'"):
        make_policy("nope")
