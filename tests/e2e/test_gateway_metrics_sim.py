"""The gateway's /metrics in front of two simulated replicas: bounded labels, TTFT only
for streams, rejections by reason, routing decisions, engine targets for Prometheus."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from dashboards.catalogue import read_catalogue
from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from tests.eventually import eventually
from tests.fixtures_engines import cached_tiny_model

CHAT = [{"role": "user", "content": "hello there, tell me about the weather today"}]
KEY = "secret-key"
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    serve.shutdown()
    cfg = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "sim", "model_source": str(cached_tiny_model())},
        "llm_engine": "sim", "deployment_config": {"num_replicas": 2},
    })
    serve.run(build_openai_app({"llm_configs": [cfg], "api_keys": [KEY]}), port=0)
    url = serve.http_url()
    assert url is not None
    # the per-replica engine gauges appear with the first stats read: wait for both
    eventually(lambda: len({labels for name, labels in scrape(url)
                            if name == "llmserve_engine_requests_waiting"}) == 2)
    yield url
    serve.shutdown()


def scrape(url: str) -> Series:
    text = httpx.get(f"{url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(series: Series, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in series.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


def test_unknown_paths_add_no_series(gateway: str) -> None:
    httpx.get(f"{gateway}/warm-up-unknown")
    scrape(gateway)  # the scrape itself counts under /metrics
    before = scrape(gateway)
    for i in range(50):
        assert httpx.get(f"{gateway}/x{i}").status_code == 404
    after = scrape(gateway)
    # only values changed (the serving core's series, labelled by deployment, may start
    # meanwhile from the gateway's own calls to its engines' replicas)
    gateway_series = {k for k in set(after) ^ set(before) if not k[0].startswith("llmserve_serve_")}
    assert not gateway_series
    assert total(after, "llmserve_requests_total", route="unmatched") == \
        total(before, "llmserve_requests_total", route="unmatched") + 50
    assert not any("/x" in value for _, labels in after for _, value in labels)


def test_requests_tokens_and_ttft_only_for_streams(gateway: str) -> None:
    client = OpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0)
    before = scrape(gateway)
    for _ in range(3):
        client.chat.completions.create(model="sim", messages=CHAT, max_tokens=4)
    middle = scrape(gateway)
    ttft = "llmserve_time_to_first_token_seconds_count"
    assert total(middle, ttft) == total(before, ttft)  # not streamed: no TTFT
    assert total(middle, "llmserve_requests_total", model_name="sim", status="200",
                 route="/v1/chat/completions") == total(
        before, "llmserve_requests_total", model_name="sim", status="200",
        route="/v1/chat/completions") + 3
    assert total(middle, "llmserve_generation_tokens_total", model_name="sim") == total(
        before, "llmserve_generation_tokens_total", model_name="sim") + 12
    stream = client.chat.completions.create(model="sim", messages=CHAT, max_tokens=6,
                                            stream=True,
                                            stream_options={"include_usage": True})
    assert sum(1 for _ in stream) >= 6
    after = scrape(gateway)
    assert total(after, ttft, model_name="sim") == total(middle, ttft) + 1
    itl = "llmserve_inter_token_latency_seconds_count"
    assert total(after, itl, model_name="sim") == total(middle, itl) + 1
    decisions = total(after, "llmserve_routing_decisions_total", model_name="sim",
                      policy="prefix_aware")
    assert decisions >= 4
    labels = {name for (n, ls), _ in after.items() if n.startswith("llmserve_")
              for name, _ in ls}
    assert "model" not in labels and "model_name" in labels


def test_rejections_by_reason_and_unknown_models_are_not_labels(gateway: str) -> None:
    before = scrape(gateway)
    assert httpx.post(f"{gateway}/v1/chat/completions", json={"model": "sim"}).status_code \
        == 401
    bad_model = httpx.post(f"{gateway}/v1/chat/completions",
                           headers={"authorization": f"Bearer {KEY}"},
                           json={"model": "no-such-model", "messages": CHAT})
    assert bad_model.status_code == 404
    after = scrape(gateway)
    assert total(after, "llmserve_rejections_total", reason="unauthorized") == total(
        before, "llmserve_rejections_total", reason="unauthorized") + 1
    # (process-wide collectors may carry other tests' models: check the unknown one only)
    models = {dict(ls).get("model_name") for (n, ls), _ in after.items()} - {None}
    assert "no-such-model" not in models and "sim" in models


def test_per_replica_gauges_name_both_replicas(gateway: str) -> None:
    series = scrape(gateway)
    replicas = {dict(ls)["replica"] for (n, ls), _ in series.items()
                if n == "llmserve_engine_requests_running"}
    assert len(replicas) == 2
    assert total(series, "llmserve_replica_ready", model_name="sim") == 2


def test_engine_targets_list_each_replica_for_prometheus(gateway: str) -> None:
    groups = httpx.get(f"{gateway}/metrics/engines").json()
    assert len(groups) == 2
    assert {g["labels"]["model_name"] for g in groups} == {"sim"}
    assert len({g["labels"]["replica"] for g in groups}) == 2
    for group in groups:
        (target,) = group["targets"]
        labels = group["labels"]
        text = httpx.get(f"{labels['__scheme__']}://{target}{labels['__metrics_path__']}").text
        assert "vllm:num_requests_running" in text


def test_every_exported_metric_is_in_the_catalogue_with_its_labels(gateway: str) -> None:
    catalogue = read_catalogue()
    text = httpx.get(f"{gateway}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)
                if f.name.startswith("llmserve_")}
    assert families
    for name, family in families.items():
        documented = name + "_total" if family.type == "counter" else name
        assert documented in catalogue, f"{documented} is not in docs/metrics.md"
        entry = catalogue[documented]
        assert entry.type == family.type
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(entry.labels), sample


def test_engine_restarts_are_counted_per_replica(gateway: str) -> None:
    """Last in this module: it kills one replica's engine (its LLMServer restarts it)."""
    info = serve.get_deployment_handle("LLMServer:sim").endpoint.remote().result()
    assert info.pid is not None
    os.killpg(info.pid, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while True:
        series = scrape(gateway)
        restarts = {dict(ls)["replica"]: v for (n, ls), v in series.items()
                    if n == "llmserve_engine_restarts_total"}
        if restarts.get(info.replica_id) == 1:
            break
        assert time.monotonic() < deadline, restarts
        time.sleep(0.2)
    assert sum(restarts.values()) == 1
