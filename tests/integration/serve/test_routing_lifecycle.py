"""A handle's routing policy hears the same lifecycle as the LLM engine pool's:
routed, first output, finished (tests/integration/routing covers the pool)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from starlette.requests import Request

from llmserve import serve
from routing import Candidate, RouteRequest, RoutingPolicy

pytestmark = pytest.mark.usefixtures("serve_instance")

EVENTS: list[tuple[str, str]] = []


class RecordingPolicy(RoutingPolicy):
    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        return sorted(candidates, key=lambda c: c.replica_id)

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        EVENTS.append(("routed", request.request_id))

    def on_first_token(self, request: RouteRequest, replica_id: str) -> None:
        EVENTS.append(("first_token", request.request_id))

    def on_finished(self, request: RouteRequest, replica_id: str) -> None:
        EVENTS.append(("finished", request.request_id))


@serve.deployment(num_replicas=2,
                  request_router_config={"policy": f"{__name__}:RecordingPolicy"})
class Counter:
    async def __call__(self, n: int) -> int:
        return n

    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i


def test_a_unary_call_is_routed_answered_then_finished() -> None:
    EVENTS.clear()
    handle = serve.run(Counter.bind(), route_prefix=None)
    assert handle.remote(3).result(timeout_s=10) == 3
    assert [kind for kind, _ in EVENTS] == ["routed", "first_token", "finished"]


def test_a_stream_reports_its_first_item_once() -> None:
    EVENTS.clear()
    handle = serve.run(Counter.bind(), route_prefix=None)
    assert list(handle.options(stream=True).count.remote(5)) == [0, 1, 2, 3, 4]
    assert [kind for kind, _ in EVENTS] == ["routed", "first_token", "finished"]
    assert len({rid for _, rid in EVENTS}) == 1


@serve.deployment(num_replicas=2,
                  request_router_config={"policy": f"{__name__}:RecordingPolicy"})
class Hello:
    async def __call__(self, request: Request) -> str:
        return "hello"


def test_an_http_request_reports_its_response_start() -> None:
    EVENTS.clear()
    serve.run(Hello.bind(), port=0)
    response = httpx.get(serve.http_url(), headers={"x-request-id": "h1"}, timeout=10)
    assert response.status_code == 200 and response.text == "hello"
    assert EVENTS == [("routed", "h1"), ("first_token", "h1"), ("finished", "h1")]
