"""W3C trace context reaches the engine; with OpenTelemetry configured the gateway adds
its routing and relay spans to the caller's trace. The engine is a small echo server
(real HTTP) that answers with the trace headers it received."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from llmserve import serve
from llmserve.llm import build_openai_app
from tests.e2e.conftest import free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def _chat(request: Request) -> JSONResponse:
    return JSONResponse({"id": "x", "object": "chat.completion", "model": "echo",
                         "choices": [], "trace": {h: request.headers.get(h)
                                                  for h in ("traceparent", "tracestate")}})


async def _models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [{"id": "echo", "parent": None}]})


ECHO = Starlette(routes=[
    Route("/v1/chat/completions", _chat, methods=["POST"]),
    Route("/v1/models", _models),
    Route("/metrics", lambda request: PlainTextResponse("")),
    Route("/health", lambda request: PlainTextResponse("")),
])


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(ECHO, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    serve.shutdown()
    serve.run(build_openai_app({"worker_urls": [f"http://127.0.0.1:{port}"],
                                "routing_config": {"policy": "round_robin"}}), port=0)
    yield serve.http_url()
    serve.shutdown()
    server.should_exit = True
    thread.join(10)


def chat(url: str, headers: dict[str, str]) -> dict[str, str | None]:
    response = httpx.post(f"{url}/v1/chat/completions", headers=headers,
                          json={"model": "echo", "messages": []})
    assert response.status_code == 200, response.text
    return dict(response.json()["trace"])


def test_traceparent_reaches_the_engine_unchanged_without_opentelemetry(gateway: str) -> None:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("another test in this process configured OpenTelemetry already")
    seen = chat(gateway, {"traceparent": TRACEPARENT, "tracestate": "vendor=1"})
    assert seen == {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}
    assert chat(gateway, {}) == {"traceparent": None, "tracestate": None}


def test_gateway_spans_join_the_callers_trace(gateway: str) -> None:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # set once per process
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen = chat(gateway, {"traceparent": TRACEPARENT})
    spans = {s.name: s for s in exporter.get_finished_spans()}
    exporter.shutdown()  # later tests' spans are not kept
    assert {"llmserve.request", "llmserve.routing", "llmserve.relay"} <= set(spans)
    relay = spans["llmserve.relay"]
    assert all(format(s.context.trace_id, "032x") == TRACE_ID for s in spans.values())
    assert relay.parent is not None
    assert relay.parent.span_id == spans["llmserve.request"].context.span_id
    assert seen["traceparent"] == f"00-{TRACE_ID}-{relay.context.span_id:016x}-01"
    assert relay.attributes is not None and relay.attributes["llmserve.replica"]
