"""W3C trace context through the gateway, and its own spans when OpenTelemetry is set up.

Without OpenTelemetry (or with no tracer provider configured) an incoming
``traceparent``/``tracestate`` is passed to the engine unchanged, so vLLM's OTLP traces
join the caller's trace. With a configured tracer provider the gateway adds a
``llmserve.request`` span (child of the incoming context) with two children,
``llmserve.routing`` and ``llmserve.relay``; the engine gets the relay span's context.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import Any

TRACE_HEADERS = ("traceparent", "tracestate")


def _tracer() -> Any | None:
    """The gateway's tracer, or None when OpenTelemetry is absent or not configured
    (checked per request: a provider may be set up after the gateway starts)."""
    trace = _trace_api()
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return trace.get_tracer("llmserve.gateway")


@functools.cache
def _trace_api() -> Any | None:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


class RequestSpans:
    """The spans of one relayed request (no-ops when tracing is off)."""

    def __init__(self, incoming: Mapping[str, str], model: str, route: str) -> None:
        self.incoming = {h: incoming[h] for h in TRACE_HEADERS if h in incoming}
        self.tracer: Any = _tracer()
        self.root: Any = None
        self.relay: Any = None
        if self.tracer is None:
            return
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(self.incoming)
        self.root = self.tracer.start_span(
            "llmserve.request", context=parent, kind=SpanKind.SERVER,
            attributes={"llm.model_name": model, "http.route": route})

    @contextlib.contextmanager
    def routing(self) -> Iterator[None]:
        if self.root is None:
            yield
            return
        from opentelemetry import trace

        with self.tracer.start_as_current_span("llmserve.routing",
                                               context=trace.set_span_in_context(self.root)):
            yield

    def engine_headers(self) -> dict[str, str]:
        """Trace headers for the engine request (starts the relay span when tracing)."""
        if self.root is None:
            return dict(self.incoming)
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.relay = self.tracer.start_span(
            "llmserve.relay", context=trace.set_span_in_context(self.root),
            kind=SpanKind.CLIENT)
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(self.relay))
        return carrier

    def replica(self, replica: str) -> None:
        if self.relay is not None:
            self.relay.set_attribute("llmserve.replica", replica)

    def end(self, status: int) -> None:
        for span in (self.relay, self.root):
            if span is not None and span.is_recording():
                span.set_attribute("http.response.status_code", status)
                span.end()
        self.relay = self.root = None
