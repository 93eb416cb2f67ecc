from __future__ import annotations

import random
from collections import Counter

from routing import RouteRequest, make_policy
from routing.hash_ring import HashRing, load_bound
from routing.least_loaded import LeastLoadedPolicy
from routing.load import is_overloaded, replica_load
from routing.session_affinity import SessionAffinityPolicy
from tests.unit.routing.fakes import ids, replica, replicas

REQ = RouteRequest("q")


def test_load_is_the_larger_of_in_flight_and_engine_running_plus_waiting() -> None:
    assert replica_load(replica("a", 3, running=1, waiting=1)) == 3
    assert replica_load(replica("a", 1, running=4, waiting=2)) == 6


def test_overload_needs_both_thresholds() -> None:
    assert is_overloaded(20, 5, abs_threshold=8, rel_threshold=1.5)
    assert not is_overloaded(12, 5, abs_threshold=8, rel_threshold=1.5)  # only +7
    assert not is_overloaded(40, 30, abs_threshold=8, rel_threshold=1.5)  # only x1.33


def test_least_loaded_ranks_by_load_and_breaks_ties_at_random() -> None:
    cands = [replica("a", 2), replica("b", 0, running=5), replica("c", 1), replica("d", 1)]
    firsts = Counter()
    policy = LeastLoadedPolicy(random.Random(0))
    for _ in range(200):
        ranked = ids(policy.choose(REQ, cands))
        assert ranked[0] in ("c", "d") and ranked[2:] == ["a", "b"]
        firsts[ranked[0]] += 1
    assert firsts["c"] > 60 and firsts["d"] > 60


def test_hash_ring_moves_only_the_departed_replicas_keys() -> None:
    ring = HashRing([f"r{i}" for i in range(8)])
    keys = [f"session-{i}" for i in range(2000)]
    before = {k: ring.walk(k)[0] for k in keys}
    assert len(set(before.values())) == 8
    ring.set_replicas([f"r{i}" for i in range(8) if i != 3])
    after = {k: ring.walk(k)[0] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == "r3" for k in moved)
    assert sorted(ring.walk("x")) == sorted(f"r{i}" for i in range(8) if i != 3)


def test_bounded_load_bound_and_spill() -> None:
    assert load_bound(total_load=15, num_replicas=4, epsilon=0.25) == 5  # ceil(1.25 * 16 / 4)
    ring = HashRing(["a", "b", "c", "d"])
    home = ring.walk("k")
    loads = {r: 0.0 for r in home}
    assert ring.place("k", loads, 0.25) == home[0]
    loads[home[0]] = 5.0  # at the bound of ceil(1.25 * 6 / 4) = 2 -> spills to the next
    assert ring.place("k", loads, 0.25) == home[1]
    assert ring.place("k", loads, 0.25, allowed=[home[2]]) == home[2]


def test_session_affinity_keeps_a_session_on_one_replica() -> None:
    policy = SessionAffinityPolicy(rng=random.Random(0))
    policy.on_replicas_changed(["r0", "r1", "r2", "r3"])
    cands = replicas(0, 0, 0, 0)
    chosen = {policy.choose(RouteRequest(f"q{i}", session_key="s1"), cands)[0].replica_id
              for i in range(20)}
    assert len(chosen) == 1
    ranked = policy.choose(RouteRequest("q", session_key="s1"), cands)
    assert sorted(ids(ranked)) == ["r0", "r1", "r2", "r3"]


def test_session_affinity_spreads_sessions_and_bounds_load() -> None:
    policy = SessionAffinityPolicy(epsilon=0.25, rng=random.Random(0))
    names = [f"r{i}" for i in range(4)]
    policy.on_replicas_changed(names)
    in_flight = dict.fromkeys(names, 0)
    for i in range(400):  # requests never finish: placement alone must stay bounded
        cands = [replica(r, n) for r, n in in_flight.items()]
        chosen = policy.choose(RouteRequest(f"q{i}", session_key=f"s{i % 40}"), cands)[0]
        in_flight[chosen.replica_id] += 1
    assert max(in_flight.values()) <= load_bound(399, 4, 0.25)


def test_session_affinity_without_a_key_is_least_loaded() -> None:
    policy = SessionAffinityPolicy(rng=random.Random(0))
    assert ids(policy.choose(REQ, replicas(3, 1, 2)))[0] == "r1"


def test_session_stays_when_another_replica_leaves() -> None:
    policy = SessionAffinityPolicy(rng=random.Random(0))
    names = [f"r{i}" for i in range(6)]
    policy.on_replicas_changed(names)
    homes = {s: policy.choose(RouteRequest("q", session_key=s), replicas(*[0] * 6))[0]
             .replica_id for s in (f"s{i}" for i in range(50))}
    gone = "r2"
    policy.on_replicas_changed([n for n in names if n != gone])
    rest = [replica(n) for n in names if n != gone]
    for session, home in homes.items():
        now = policy.choose(RouteRequest("q", session_key=session), rest)[0].replica_id
        assert now == home or home == gone


def test_registry_builds_every_policy() -> None:
    for name in ("least_loaded", "session_affinity", "prefix_aware", "scored"):
        assert make_policy(name).choose(REQ, replicas(1, 0))
