from __future__ import annotations

import random

import pytest

from routing import RouteRequest, make_policy
from routing.prefix_aware import PrefixAwarePolicy
from tests.unit.routing.fakes import ids, replica, replicas

BS = 4


def tokens(*blocks: int) -> tuple[int, ...]:
    return tuple(b for b in blocks for _ in range(BS))


def req(rid: str, *blocks: int, model: str = "m", lora: str | None = None) -> RouteRequest:
    return RouteRequest(rid, model, prompt_token_ids=tokens(*blocks), lora_adapter=lora)


def policy(**kwargs: float) -> PrefixAwarePolicy:
    return PrefixAwarePolicy(block_size=BS, rng=random.Random(0), **kwargs)  # type: ignore[arg-type]


def route(p: PrefixAwarePolicy, request: RouteRequest, cands: list) -> str:  # type: ignore[type-arg]
    chosen = p.choose(request, cands)[0].replica_id
    p.on_routed(request, chosen)
    return chosen


def test_a_repeated_prefix_goes_back_to_the_replica_that_cached_it() -> None:
    p = policy()
    first = route(p, req("1", 1, 2, 3), replicas(0, 0, 0))
    # the other replicas are idler now, but the prefix wins within the load guard
    cands = [replica(r, 2 if r == first else 0) for r in ("r0", "r1", "r2")]
    assert route(p, req("2", 1, 2, 9), cands) == first


def test_new_prefixes_go_to_the_least_loaded_then_least_cached_replica() -> None:
    p = policy()
    assert route(p, req("1", 1, 1), replicas(1, 0, 1)) == "r1"
    assert route(p, req("2", 2, 2), replicas(0, 0, 0)) in ("r0", "r2")  # r1 caches 2 blocks
    third = route(p, req("3", 3, 3), replicas(0, 0, 0))
    assert {"r0", "r1", "r2"} - {third} and p.indexes["m"].cached_blocks(third) == 2


def test_longest_match_wins_over_a_shorter_one() -> None:
    p = policy()
    route(p, req("1", 1, 2), [replica("a")])
    route(p, req("2", 1, 2, 3, 4), [replica("b")])
    assert ids(p.choose(req("3", 1, 2, 3, 4, 5), [replica("a"), replica("b", 3)]))[0] == "b"


def test_load_guard_yields_to_the_least_loaded_when_the_holder_is_overloaded() -> None:
    p = policy(balance_abs_threshold=4, balance_rel_threshold=1.5)
    route(p, req("1", 1, 2), [replica("a")])
    # 'a' holds the prefix; +4 over the least loaded is not yet overloaded
    assert ids(p.choose(req("2", 1, 2), [replica("a", 6), replica("b", 2)]))[0] == "a"
    # +5 and x3.5: overloaded -> the least-loaded replica takes it and caches it too
    assert route(p, req("3", 1, 2), [replica("a", 7), replica("b", 2)]) == "b"
    assert p.indexes["m"].match(list(p.match(req("x", 1, 2)).hashes)) == {"a": 2, "b": 2}  # type: ignore[union-attr]
    # a third replica idles: 'b' still holds the prefix and is not overloaded vs 'c'
    cands = [replica("a", 9), replica("b", 3), replica("c", 0)]
    assert ids(p.choose(req("4", 1, 2), cands)) == ["b", "c", "a"]


def test_engine_queue_counts_in_the_guard() -> None:
    p = policy(balance_abs_threshold=4, balance_rel_threshold=1.5)
    route(p, req("1", 1, 2), [replica("a")])
    cands = [replica("a", 1, running=2, waiting=10), replica("b")]
    assert ids(p.choose(req("2", 1, 2), cands))[0] == "b"


def test_a_match_below_min_match_ratio_counts_as_none() -> None:
    p = policy(min_match_ratio=0.5)
    route(p, req("1", 1), [replica("a")])
    cands = [replica("a", 1), replica("b", 0)]
    assert ids(p.choose(req("2", 1, 5, 6), cands))[0] == "b"  # 1 of 3 blocks < 0.5
    assert ids(p.choose(req("3", 1, 5), cands))[0] == "a"  # 1 of 2 blocks


def test_text_prompt_is_matched_by_characters() -> None:
    p = policy()
    long_text = "You are a helpful assistant. " * 4
    first = RouteRequest("1", "m", prompt=long_text + "Q1")
    p.on_routed(first, "b")  # routed without a choice: on_routed hashes it itself
    second = RouteRequest("2", "m", prompt=long_text + "Q2")
    assert ids(p.choose(second, [replica("a"), replica("b", 1)]))[0] == "b"


def test_indexes_are_per_model_and_adapter() -> None:
    p = policy()
    route(p, req("1", 1, 2, model="m"), [replica("a")])
    route(p, req("2", 1, 2, model="m", lora="l1"), [replica("b")])
    cands = [replica("a", 1), replica("b", 1), replica("c", 0)]
    assert ids(p.choose(req("3", 1, 2, model="m"), cands))[0] == "a"
    assert ids(p.choose(req("4", 1, 2, model="m", lora="l1"), cands))[0] == "b"
    assert ids(p.choose(req("5", 1, 2, model="other"), cands))[0] == "c"


def test_a_replica_that_goes_away_is_forgotten() -> None:
    p = policy()
    route(p, req("1", 1, 2), [replica("a")])
    p.on_replicas_changed(["b", "c"])
    assert p.indexes["m"].match(list(p.match(req("x", 1, 2)).hashes)) == {}  # type: ignore[union-attr]


def test_without_a_prompt_it_is_least_loaded_and_records_nothing() -> None:
    p = policy()
    bare = RouteRequest("1", "m")
    assert route(p, bare, replicas(2, 0, 1)) == "r1"
    assert p.indexes == {}


def test_registry_options_and_prompt_flag() -> None:
    p = make_policy("prefix_aware", block_size=32, max_index_bytes=1 << 20)
    assert isinstance(p, PrefixAwarePolicy) and p.block_size == 32 and p.needs_prompt
    assert not make_policy("power_of_two").needs_prompt
    with pytest.raises(ValueError):
        PrefixAwarePolicy(block_size=0)


def test_share_guard_spills_a_replica_sent_more_than_its_share_of_recent_requests() -> None:
    # the guard's arithmetic alone: no holding while a spilled prefix is being computed
    p = policy(share_window=8, share_bound=1.5, share_min=1, hold_while_warming=False)
    route(p, req("1", 1, 2), [replica("a")])
    # 'a' holds the prefix and is not overloaded; one request in flight somewhere
    cands = [replica("a", 1), replica("b", 0)]
    assert route(p, req("2", 1, 2), cands) == "a"  # shares a=1 b=0: cap max(1, 0.75)
    # shares a=2 b=0, mean 1, cap 1.5: 'a' is full, 'b' takes it (and caches it)
    assert route(p, req("3", 1, 2), cands) == "b"
    # both hold it now; a=2 b=1, cap 2.25: neither full, the less loaded wins
    assert route(p, req("4", 1, 2), cands) == "b"
    assert route(p, req("5", 1, 2), cands) == "b"  # a=2 b=2
    # a=2 b=3, mean 2.5, cap 3.75: 'b' is not full yet
    assert route(p, req("6", 1, 2), cands) == "b"
    # a=2 b=4, mean 3, cap 4.5 ... the window is 8 decisions: the oldest drop out
    for n in range(7, 12):
        route(p, req(str(n), 1, 2), cands)
    assert sum(p._recent_counts.values()) == 8


def test_share_guard_waits_for_an_idle_cluster_to_stay_sticky() -> None:
    p = policy(share_window=8, share_bound=1.5, share_min=1, hold_while_warming=False,
               share_margin=0.0)
    route(p, req("0", 1, 2, 10), [replica("a")])
    for n in range(1, 6):  # one user, one request at a time: nothing in flight anywhere
        assert route(p, req(str(n), 1, 2, n + 10), [replica("a"), replica("b")]) == "a"
    assert p._recent_counts == {"a": 6}
    # a stale engine report of one running request is not a busy cluster
    assert route(p, req("6", 1, 2, 16), [replica("a"), replica("b", running=1)]) == "a"
    # engines reporting a request per replica (another ingress's traffic) are
    busy = [replica("a", running=1), replica("b", running=1)]
    assert route(p, req("7", 1, 2, 17), busy) == "b"
    # and so is a request of this router's own in flight: 'a' has had more than its share
    assert route(p, req("8", 1, 2, 18), [replica("a"), replica("b", 1)]) == "b"


def test_share_guard_wants_more_evidence_from_a_router_that_sees_part_of_the_traffic() -> None:
    """Behind several ingresses each counts a few decisions: a share over the cap by
    less than share_margin standard deviations, scaled by the part of the engines'
    requests this router did not send, is noise, not a reason to spill."""
    def sticky_decisions(engine_running: int) -> int:
        p = policy(share_window=8, share_bound=1.5, share_min=1, hold_while_warming=False)
        route(p, req("0", 1, 2, 10), [replica("a")])
        n = 1
        while n < 40:
            cands = [replica("a", 1, running=engine_running),
                     replica("b", 0, running=engine_running)]
            if route(p, req(str(n), 1, 2, n + 10), cands) != "a":
                return n
            n += 1
        return n

    alone = sticky_decisions(0)  # the engines run only what this router sent
    shared = sticky_decisions(8)  # 16 running, 1 of them this router's
    assert alone == 2  # the cap alone: shares a=2 b=0 > 1.5
    assert shared > alone + 2  # noise margin


def test_a_hot_prefix_spreads_to_just_enough_replicas_within_the_share_bound() -> None:
    """Half the requests share one prefix, the rest are 15 groups; 8 replicas, each with
    requests in flight. The hot prefix ends on a few replicas, every replica's share of
    the last window stays within the bound, and the cold groups keep their replicas."""
    p = policy(share_window=256, share_bound=1.4)
    rng = random.Random(1)
    names = [f"r{i}" for i in range(8)]
    holders: dict[int, set[str]] = {}
    sent = dict.fromkeys(names, 0)
    computing: list[tuple[RouteRequest, str]] = []  # first token 3 requests later
    for n in range(2048):
        group = 0 if rng.random() < 0.5 else rng.randrange(1, 16)
        cands = [replica(r, 3) for r in names]
        request = req(str(n), group + 100, group + 200, n + 1000)
        chosen = route(p, request, cands)
        computing.append((request, chosen))
        if len(computing) > 3:
            p.on_first_token(*computing.pop(0))
        holders.setdefault(group, set()).add(chosen)
        if n >= 1024:
            sent[chosen] += 1
    assert 3 <= len(holders[0]) <= 5
    mean = sum(sent.values()) / len(sent)
    assert max(sent.values()) <= 1.5 * mean
    cold_moves = sum(len(h) - 1 for g, h in holders.items() if g)
    assert cold_moves <= 6


def test_share_guard_moves_shared_prefixes_not_a_conversations_own_history() -> None:
    p = policy(share_window=8, share_bound=1.5, share_min=1)
    busy = [replica("a", 1), replica("b", 1)]
    route(p, req("t1", 1, 2), [replica("a")])
    # each turn re-sends the history and matches it one turn deeper: a prefix no other
    # request matched, so it stays on 'a' although 'a' has had every recent decision
    for n, turn in enumerate([(1, 2, 3), (1, 2, 3, 4), (1, 2, 3, 4, 5)], start=2):
        assert route(p, req(f"t{n}", *turn), busy) == "a"
    assert p._recent_counts == {"a": 4}
    # a group prefix: the second request is the first to match it (still private) ...
    route(p, req("u1", 9, 10, 11), [replica("a")])
    assert route(p, req("u2", 9, 10, 12), busy) == "a"
    # ... the third matches what the second did: shared, and 'a' is over its share
    assert route(p, req("u3", 9, 10, 13), busy) == "b"
    # the conversation, matched deeper again, still stays on 'a'
    assert route(p, req("t5", 1, 2, 3, 4, 5, 6), busy) == "a"


def test_holders_keep_a_spilled_prefix_until_its_new_replica_has_computed_it() -> None:
    p = policy(share_window=8, share_bound=1.5, share_min=1, hold_while_warming=True)
    busy = [replica("a", 1), replica("b", 1)]
    route(p, req("1", 1, 2, 3), [replica("a")])
    route(p, req("2", 1, 2, 4), busy)  # the first to match (1, 2): private, stays on 'a'
    spilled = req("3", 1, 2, 5)
    assert route(p, spilled, busy) == "b"  # shared now, and 'a' is over its share: spill
    # 'b' is computing (1, 2): more of the prefix waits for it there, so 'a' takes them
    # although it is over its share
    assert route(p, req("4", 1, 2, 6), busy) == "a"
    assert route(p, req("5", 1, 2, 7), busy) == "a"
    p.on_first_token(spilled, "b")  # 'b' has it: the share guard applies again
    assert route(p, req("6", 1, 2, 8), busy) == "b"
    # a spill whose request ends (or fails) before its first token also stops holding
    p2 = policy(share_window=8, share_bound=1.5, share_min=1, hold_while_warming=True)
    route(p2, req("1", 1, 2, 3), [replica("a")])
    route(p2, req("2", 1, 2, 4), busy)
    failed = req("3", 1, 2, 5)
    assert route(p2, failed, busy) == "b"
    p2.on_finished(failed, "b")
    assert route(p2, req("4", 1, 2, 6), busy) == "b"
    assert p2._warming == {} and all(w is None for _, _, w in p2._routed.values())


def test_a_warming_replica_that_leaves_is_forgotten() -> None:
    p = policy(share_window=8, share_bound=1.5, share_min=1, hold_while_warming=True)
    busy = [replica("a", 1), replica("b", 1)]
    route(p, req("1", 1, 2, 3), [replica("a")])
    route(p, req("2", 1, 2, 4), busy)
    assert route(p, req("3", 1, 2, 5), busy) == "b" and p._warming
    p.on_replicas_changed(["a"])
    assert p._warming == {} and all(w is None for _, _, w in p._routed.values())


def test_ties_go_to_the_replica_with_the_least_prefill_queued() -> None:
    p = policy()
    long = req("1", 1, 2, 3, 4)
    assert route(p, long, replicas(0, 1)) == "r0"  # r0 now computes 4 blocks
    assert p._prefilling == {"r0": 4}
    # a new prefix: r0 is less loaded, but its queue holds a prompt; r1's is empty
    assert route(p, req("2", 5, 6), replicas(1, 2)) == "r1"
    p.on_first_token(long, "r0")  # r0 is done prefilling: load decides again
    assert p._prefilling == {"r1": 2}
    p.on_finished(req("2", 5, 6), "r1")
    assert route(p, req("3", 7, 8), replicas(1, 2)) == "r0"
    # without it, the least loaded replica wins although it is computing a prompt
    off = policy(prefill_aware=False)
    route(off, req("1", 1, 2, 3, 4), replicas(0, 1))
    assert route(off, req("2", 5, 6), replicas(1, 2)) == "r0" and off._prefilling == {}


def test_of_two_holders_the_one_not_computing_another_prompt_wins() -> None:
    p = policy()
    route(p, req("1", 1, 2, 3), [replica("a")])
    route(p, req("2", 1, 2, 4), [replica("b")])  # both hold (1, 2) now
    p.on_first_token(req("1", 1, 2, 3), "a")
    p.on_first_token(req("2", 1, 2, 4), "b")
    other = req("3", 9, 9, 9, 9)
    assert route(p, other, [replica("a", 0), replica("b", 1)]) == "a"  # a computes it
    # 'a' is less loaded and holds (1, 2) as deeply as 'b', but has a prompt queued
    assert route(p, req("4", 1, 2, 5), [replica("a", 1), replica("b", 2)]) == "b"
    # a replica that goes away takes its queue with it
    p.on_replicas_changed(["b"])
    assert "a" not in p._prefilling and all(r == "b" for r, _, _ in p._routed.values())


def test_queued_prefills_whose_hooks_never_come_are_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("routing.prefix_aware._PENDING_LIMIT", 2)
    p = policy()
    for n in range(5):
        route(p, req(str(n), 10 + n, 20 + n), [replica("a")])
    assert list(p._routed) == ["3", "4"] and p._prefilling == {"a": 4}
