"""The serving core's deployment gauges on the Ray runtime reach the gateway's /metrics,
under the names the local runtime uses: replicas by state, desired against running
replicas (the autoscaler's decisions), queued and ongoing requests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from tests.eventually import eventually
from tests.fixtures_engines import cached_tiny_model
from tests.integration.ray.apps import Sleeper

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SMALL = {"ray_actor_options": {"num_cpus": 0.1}}


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    serve.shutdown()
    ray.init(num_cpus=16)
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def gateway(ray_runtime: None) -> Iterator[str]:
    cfg = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "sim", "model_source": str(cached_tiny_model())},
        "llm_engine": "sim", "deployment_config": {"num_replicas": 2, **SMALL}})
    serve.run(build_openai_app({"llm_configs": [cfg], "ingress_deployment_config": SMALL}),
              port=0, runtime="ray")
    url = serve.http_url()
    assert url is not None
    yield url


def scrape(url: str) -> Series:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(series: Series, name: str, **labels: str) -> float | None:
    """The sum of the samples of ``name`` with ``labels``; None when there is none."""
    found = [v for (n, ls), v in series.items()
             if n == name and all(dict(ls).get(k) == want for k, want in labels.items())]
    return sum(found) if found else None


def test_replicas_by_state_and_desired_vs_running_per_deployment(gateway: str) -> None:
    llm = {"application": "default", "deployment": "LLMServer:sim"}

    def settled() -> Series:
        series = scrape(gateway)
        assert value(series, "llmserve_serve_deployment_replicas", state="RUNNING", **llm) == 2
        assert value(series, "llmserve_serve_deployment_replicas", state="STARTING",
                     **llm) == 0
        assert value(series, "llmserve_serve_autoscaling_desired_replicas", **llm) == 2
        assert value(series, "llmserve_serve_autoscaling_running_replicas", **llm) == 2
        return series

    series = eventually(settled, timeout_s=30)
    status = serve.status().applications["default"].deployments
    for name, dep in status.items():
        labels = {"application": "default", "deployment": name}
        assert value(series, "llmserve_serve_autoscaling_running_replicas",
                     **labels) == dep.running_replicas
    # the figures are the controller actor's: labelled with its process, not the gateway's
    controllers = {dict(ls)["controller"] for n, ls in series
                   if n == "llmserve_serve_autoscaling_desired_replicas"}
    assert len(controllers) == 1
    (controller,) = controllers
    assert controller and not controller.endswith(f":{os.getpid()}")


def test_autoscaling_queued_and_ongoing_on_the_gateway(gateway: str) -> None:
    sleeper = Sleeper.options(
        name="Sleepy", max_ongoing_requests=1, num_replicas="auto", autoscaling_config={
            "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
            "upscale_delay_s": 0, "downscale_delay_s": 0.5, "look_back_period_s": 0.3})
    handle = serve.run(sleeper.bind(), name="sleepy", route_prefix=None, runtime="ray")
    labels = {"application": "sleepy", "deployment": "Sleepy"}
    eventually(lambda: value(scrape(gateway), "llmserve_serve_autoscaling_running_replicas",
                             **labels) == 1, timeout_s=30)
    calls = [handle.remote(4.0) for _ in range(6)]  # one slot per replica: most must queue

    def under_load() -> bool:
        series = scrape(gateway)
        assert value(series, "llmserve_serve_autoscaling_desired_replicas", **labels) == 2
        assert value(series, "llmserve_serve_autoscaling_running_replicas", **labels) == 2
        assert (value(series, "llmserve_serve_deployment_queued_requests", **labels) or 0) >= 2
        ongoing = value(series, "llmserve_serve_deployment_ongoing_requests", **labels)
        assert ongoing is not None and 1 <= ongoing <= 2
        return True

    eventually(under_load, timeout_s=30, interval_s=0.2)
    assert all(isinstance(c.result(timeout_s=60), int) for c in calls)

    def idle() -> bool:
        series = scrape(gateway)
        assert value(series, "llmserve_serve_autoscaling_desired_replicas", **labels) == 1
        assert value(series, "llmserve_serve_deployment_queued_requests", **labels) == 0
        assert value(series, "llmserve_serve_deployment_ongoing_requests", **labels) == 0
        return True

    eventually(idle, timeout_s=30, interval_s=0.2)
    serve.delete("sleepy")  # a deleted deployment's series go with it
    eventually(lambda: value(scrape(gateway), "llmserve_serve_autoscaling_desired_replicas",
                             **labels) is None, timeout_s=15)
