"""Set up OpenTelemetry tracing from the standard ``OTEL_*`` environment variables.

``llmserve serve`` calls :func:`configure_tracing_from_env` at start-up: when
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (and
``OTEL_SDK_DISABLED`` is not ``true``), the gateway's spans go to that OTLP endpoint
(protocol from ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``grpc``, the default, or
``http/protobuf``). A tracer provider set up by other means (for example
``opentelemetry-instrument``) is left as it is.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("llmserve")
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def configure_tracing_from_env() -> bool:
    """True when this call set up a tracer provider."""
    if not any(os.environ.get(v) for v in ENDPOINT_VARS):
        return False
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("an OTLP endpoint is set but OpenTelemetry is not installed: no gateway "
                    "spans (pip install 'llmserve[tracing]'); trace headers still pass")
        return False
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") \
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
    except ImportError:
        log.warning("an OTLP endpoint is set but the OTLP exporter is not installed "
                    "(pip install 'llmserve[tracing]'): no gateway spans")
        return False
    provider = TracerProvider(resource=Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", "llmserve")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True
