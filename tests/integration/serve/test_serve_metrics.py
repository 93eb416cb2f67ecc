"""The serving core's serve_*-style metrics at the proxy's /-/metrics, over real HTTP."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmserve import serve

pytestmark = pytest.mark.usefixtures("serve_instance")


@serve.deployment(num_replicas=2)
class Doubler:
    def __call__(self, x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return 2 * x


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/-/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(series: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return sum(v for (n, ls), v in series.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


def test_requests_errors_latency_and_replicas_per_deployment() -> None:
    handle = serve.run(Doubler.bind(), name="metrics_app", port=0)
    url = serve.http_url()
    deadline = time.monotonic() + 30
    while value(scrape(url), "llmserve_serve_deployment_replicas", deployment="Doubler",
                state="RUNNING") < 2:
        assert time.monotonic() < deadline, "replicas did not show as RUNNING"
        time.sleep(0.05)
    before = scrape(url)
    for x in range(5):
        assert handle.remote(x).result(timeout_s=10) == 2 * x
    with pytest.raises(ValueError):
        handle.remote(-1).result(timeout_s=10)
    after = scrape(url)
    labels = {"application": "metrics_app", "deployment": "Doubler"}
    requests = "llmserve_serve_deployment_requests_total"
    assert value(after, requests, **labels) - value(before, requests, **labels) == 6
    errors = "llmserve_serve_deployment_errors_total"
    assert value(after, errors, **labels) - value(before, errors, **labels) == 1
    latency = "llmserve_serve_deployment_processing_latency_seconds_count"
    assert value(after, latency, **labels) - value(before, latency, **labels) == 6
    assert value(after, "llmserve_serve_autoscaling_desired_replicas", **labels) == 2
    assert value(after, "llmserve_serve_autoscaling_running_replicas", **labels) == 2
    assert value(after, "llmserve_serve_deployment_queued_requests", **labels) == 0
    serve.delete("metrics_app")
    gone = scrape(url)
    assert value(gone, "llmserve_serve_autoscaling_desired_replicas", **labels) == 0
    assert not any(dict(ls).get("deployment") == "Doubler" and n.startswith(
        "llmserve_serve_deployment_replicas") for n, ls in gone)
