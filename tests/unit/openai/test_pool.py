"""The engine pool routes through the shared dispatcher: counts and hooks per request."""

from __future__ import annotations

import asyncio

from engines.registry import make_engine
from llmserve.openai.pool import EngineDirectory, ModelPool, make_pool
from routing import RouteRequest
from tests.unit.routing.test_dispatch import Recording


def pool_of(*urls: str) -> tuple[ModelPool, Recording]:
    policy = Recording()
    return ModelPool("m", make_engine("sim"), policy, urls=urls), policy


def test_a_request_is_counted_from_choice_to_finish_and_the_policy_hears_each_step() -> None:
    pool, policy = pool_of("http://a", "http://b")
    request = RouteRequest("q1", "m")
    endpoint = pool.choose(request)
    assert endpoint is not None and endpoint.key == "http://a"
    assert pool.in_flight == 1 and pool.in_flight_of(endpoint) == 1
    pool.first_token(endpoint, request)
    pool.finish(endpoint, request, failed=True)
    assert pool.in_flight == 0 and endpoint.failures == 1
    assert policy.events == [("replicas", "http://a,http://b"), ("routed", "http://a"),
                             ("first_token", "http://a"), ("finished", "http://a")]


def test_the_policy_sees_the_pools_own_in_flight_counts() -> None:
    pool, policy = pool_of("http://a", "http://b")
    pool.choose(RouteRequest("q1", "m"))
    pool.choose(RouteRequest("q2", "m"))
    assert policy.ranked == [{"http://a": 0, "http://b": 0}, {"http://a": 1, "http://b": 0}]


def test_unready_engines_are_not_chosen_and_none_ready_gives_none() -> None:
    pool, policy = pool_of("http://a", "http://b")
    pool.endpoints["http://a"].ready = False  # ejected (see the breaker tests)
    chosen = pool.choose(RouteRequest("q1", "m"))
    assert chosen is not None and chosen.key == "http://b"
    assert policy.ranked == []  # one ready engine: nothing to rank
    pool.endpoints["http://b"].ready = False
    assert pool.choose(RouteRequest("q2", "m")) is None
    assert pool.in_flight == 1


def test_make_pool_reads_the_policy_and_drops_block_size_it_does_not_take() -> None:
    pool = make_pool("m", "sim", {"policy": "round_robin", "block_size": 32,
                                  "tokenizer_source": "x"}, urls=("http://a",))
    assert type(pool.policy).__name__ == "RoundRobinPolicy" and not pool.policy.needs_prompt


async def test_closing_the_directory_stops_its_refresh_task_after_refreshes() -> None:
    pool, _ = pool_of("http://127.0.0.1:9")  # nothing listens: stats fail, the loop goes on
    directory = EngineDirectory({"m": pool}, refresh_s=0.01)
    directory.start()
    task = directory._task
    await asyncio.sleep(0.1)  # several refreshes, each syncing the engine keys
    await directory.close()
    assert task is not None and task.done()
