"""The routing lifecycle both routers share: in-flight counts and the policy's hooks."""

from __future__ import annotations

from collections.abc import Sequence

from routing import Candidate, RouteRequest, RoutingPolicy
from routing.dispatch import Dispatcher
from routing.round_robin import RoundRobinPolicy
from tests.unit.routing.fakes import replicas


class Recording(RoutingPolicy):
    """Ranks by id; records every hook."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.ranked: list[dict[str, int]] = []  # each choice's candidates, with in-flight

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        self.ranked.append({c.replica_id: c.num_ongoing for c in candidates})
        return sorted(candidates, key=lambda c: c.replica_id)

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        self.events.append(("routed", replica_id))

    def on_first_token(self, request: RouteRequest, replica_id: str) -> None:
        self.events.append(("first_token", replica_id))

    def on_finished(self, request: RouteRequest, replica_id: str) -> None:
        self.events.append(("finished", replica_id))

    def on_replicas_changed(self, replica_ids: Sequence[str]) -> None:
        self.events.append(("replicas", ",".join(replica_ids)))


def test_one_request_runs_routed_first_token_finished_and_is_counted_meanwhile() -> None:
    policy = Recording()
    dispatcher = Dispatcher(policy, ["a", "b"])
    request = RouteRequest("q1")
    assert dispatcher.choose(request, replicas(0, 0)) == "r0"
    dispatcher.set_replicas(["r0", "r1"])
    dispatcher.routed(request, "r1")
    assert dispatcher.in_flight_of("r1") == 1 and dispatcher.num_in_flight == 1
    dispatcher.first_token(request, "r1")
    assert dispatcher.num_in_flight == 1  # the first token does not end it
    dispatcher.finished(request, "r1")
    assert dispatcher.num_in_flight == 0 and dispatcher.in_flight_of("r1") == 0
    assert policy.events == [("replicas", "a,b"), ("routed", "r0"), ("replicas", "r0,r1"),
                             ("routed", "r1"), ("first_token", "r1"), ("finished", "r1")]


def test_choose_skips_full_replicas_and_asks_the_policy_only_when_there_is_a_choice() -> None:
    policy = Recording()
    dispatcher = Dispatcher(policy, ["a", "b"])
    full = Candidate("a", num_ongoing=2, max_ongoing=2)
    free = Candidate("b", num_ongoing=1, max_ongoing=2)
    assert dispatcher.choose(RouteRequest("q1"), [full, free]) == "b"
    assert dispatcher.choose(RouteRequest("q2"), [full]) is None
    assert dispatcher.choose(RouteRequest("q3"), []) is None
    assert dispatcher.choose(RouteRequest("q4"), [free]) == "b"
    assert policy.ranked == [{"a": 2, "b": 1}]  # one candidate: nothing to rank
    assert dispatcher.in_flight_of("b") == 2 and dispatcher.in_flight_of("a") == 0


def test_a_replica_leaving_drops_its_count_and_its_late_finish_stays_harmless() -> None:
    dispatcher = Dispatcher(RoundRobinPolicy(), ["a", "b"])
    dispatcher.routed(RouteRequest("q1"), "a")
    dispatcher.routed(RouteRequest("q2"), "b")
    dispatcher.set_replicas(["b", "c"])
    assert dispatcher.replica_ids == ["b", "c"] and dispatcher.num_in_flight == 1
    dispatcher.finished(RouteRequest("q1"), "a")
    dispatcher.finished(RouteRequest("q2"), "b")
    dispatcher.finished(RouteRequest("q2"), "b")  # a caller's double finish: never negative
    assert dispatcher.num_in_flight == 0 and dispatcher.in_flight_of("b") == 0


def test_a_policy_overriding_nothing_but_choose_has_every_hook() -> None:
    policy = RoundRobinPolicy()
    assert isinstance(policy, RoutingPolicy) and not policy.needs_prompt
    policy.on_routed(RouteRequest("q"), "a")
    policy.on_first_token(RouteRequest("q"), "a")
    policy.on_finished(RouteRequest("q"), "a")
    policy.on_replicas_changed(["a"])
