"""OTEL_* environment variables turn on the gateway's spans (in a fresh process: the
tracer provider is set once per process)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
from opentelemetry import trace
from llmserve.tracing_setup import configure_tracing_from_env
print(configure_tracing_from_env(), type(trace.get_tracer_provider()).__name__)
"""


def run(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=clean | env, check=True,
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def test_an_otlp_endpoint_sets_up_a_tracer_provider() -> None:
    assert run({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}) == \
        "True TracerProvider"
    assert run({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) == "True TracerProvider"


def test_without_an_endpoint_or_when_disabled_nothing_changes() -> None:
    assert run({}) == "False ProxyTracerProvider"
    assert run({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
                "OTEL_SDK_DISABLED": "true"}) == "False ProxyTracerProvider"
