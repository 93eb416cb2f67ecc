"""The OpenAI ingress on its own: built and called directly, without the serving core.

Two simulated engines at fixed URLs (as ``--worker-urls`` gives them); each request is a
Starlette ``Request`` on a hand-made ASGI scope, and the ingress's answer is played into a
collecting ``send``. What the tests see is what the proxy would pass on.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from llmserve.openai.ingress import ModelSource, OpenAiIngress
from tests.faults.harness import MODEL, SimEngine, metric_sum, start_engines
from tests.fixtures_engines import cached_tiny_model

PROMPT = "the same long system prompt shared by every request of one group " * 6


@pytest.fixture(scope="module")
def engines() -> Iterator[list[SimEngine]]:
    started = start_engines(str(cached_tiny_model()), 2, time_scale=0.01)
    try:
        yield started
    finally:
        for engine in started:
            engine.kill()


@pytest.fixture
async def ingress(engines: list[SimEngine]) -> AsyncIterator[OpenAiIngress]:
    source = ModelSource(MODEL, "sim", {"policy": "prefix_aware"},
                         urls=tuple(e.url for e in engines))
    made = OpenAiIngress.__new__(OpenAiIngress)
    await made.__init__([source])  # type: ignore[misc]
    try:
        yield made
    finally:
        await made.__del__()


async def call(ingress: OpenAiIngress, method: str, path: str,
               body: dict[str, Any] | None = None) -> tuple[int, dict[str, str], bytes]:
    raw = json.dumps(body).encode() if body is not None else b""
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(raw)).encode())]}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return {"type": "http.disconnect"} if finished else await _never()

    finished = False
    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)

    response: Response = await ingress(Request(scope, receive))
    await response(scope, receive, send)
    finished = True
    start = messages[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in messages[1:])


async def _never() -> dict[str, Any]:
    import asyncio

    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_a_chat_request_is_answered_with_usage(ingress: OpenAiIngress) -> None:
    status, headers, body = await call(ingress, "POST", "/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})
    assert status == 200, body
    answer = json.loads(body)
    assert answer["usage"]["completion_tokens"] == 4
    assert headers["x-request-id"]
    assert ingress.pools[MODEL].in_flight == 0


async def test_a_stream_is_relayed_to_its_end(ingress: OpenAiIngress) -> None:
    status, headers, body = await call(ingress, "POST", "/v1/completions", {
        "model": MODEL, "prompt": "hello", "max_tokens": 5, "stream": True,
        "stream_options": {"include_usage": True}})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = [line for line in body.decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2].removeprefix("data: "))["usage"]
    assert usage["completion_tokens"] == 5
    assert ingress.pools[MODEL].in_flight == 0


async def test_an_unknown_model_is_an_openai_404(ingress: OpenAiIngress) -> None:
    status, _, body = await call(ingress, "POST", "/v1/chat/completions", {
        "model": "nope", "messages": [{"role": "user", "content": "hello"}]})
    assert status == 404
    assert json.loads(body)["error"]["code"] == "model_not_found"


async def test_models_are_listed(ingress: OpenAiIngress) -> None:
    status, _, body = await call(ingress, "GET", "/v1/models")
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == [MODEL]


async def test_a_repeated_prefix_goes_to_the_engine_that_served_it(
        ingress: OpenAiIngress, engines: list[SimEngine]) -> None:
    def served() -> list[float]:
        return [metric_sum(httpx.get(f"{e.url}/metrics").text, "vllm:request_success_total")
                for e in engines]

    before = served()
    for i in range(4):
        status, _, body = await call(ingress, "POST", "/v1/completions", {
            "model": MODEL, "prompt": PROMPT + f"question {i}", "max_tokens": 2})
        assert status == 200, body
    after = served()
    assert sorted(a - b for a, b in zip(after, before, strict=True)) == [0, 4]
