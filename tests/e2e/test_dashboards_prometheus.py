"""Every dashboard panel's PromQL, run on a real Prometheus that scraped a gateway in
front of simulated replicas (and their engines, found through /metrics/engines): a model
on two replicas with KV-cache events, a LoRA model with its adapters in S3 (a moto
server), a model whose KV events cannot be used (degraded), a prefill/decode app at
``/pd`` and a plain deployment that fails, at ``/boom``. Every catalogued metric must reach
Prometheus too, or be listed as not exercised here."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml

from dashboards.catalogue import read_catalogue, series_names
from dashboards.panels import concrete
from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app, build_pd_openai_app
from llmserve.llm.tiny_model import cached_tiny_model as tiny_model_with_loras
from tests.e2e.conftest import free_port
from tests.fixtures_engines import cached_tiny_model

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards" / "grafana").glob("*.json"))
SHIPPED_CONFIG = ROOT / "dashboards" / "prometheus" / "prometheus.yml"
KEY = "dashboard-test-key"
# panels whose data needs what this test does not cause
NOT_EXERCISED = {
    "P/D: retries": "needs a P/D replica that fails or cannot be reached (test_pd_faults.py)",
}
# catalogued metrics this test does not cause (their panels are listed above)
NOT_EXPORTED_HERE = {
    "llmserve_pd_decode_retries_total": "needs a decode replica that cannot be reached",
    "llmserve_pd_prefill_retries_total": "needs a prefill replica failing mid-prefill",
}
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None,
                                reason="needs Debian's prometheus binary (.ci/run installs it)")


def panels() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((path.stem, panel["title"], target))
    return found


def metric_names(node: Any) -> set[str]:
    """The metric names a parsed PromQL expression selects."""
    if isinstance(node, promql_parser.VectorSelector):
        return {node.name} if node.name else set()
    names: set[str] = set()
    for attr in ("args", "expr", "lhs", "rhs", "param", "vector_selector"):
        child = getattr(node, attr, None)
        for item in child if isinstance(child, list) else [child]:
            if item is not None and not isinstance(item, (int, float, str)):
                names |= metric_names(item)
    return names


def test_every_query_parses_and_names_catalogued_metrics() -> None:
    catalogue = read_catalogue()
    known = set().union(*(series_names(e) for e in catalogue.values()))
    checked = panels()
    assert len(checked) >= 40 and len(DASHBOARDS) == 5
    for board, title, target in checked:
        names = metric_names(promql_parser.parse(concrete(target["expr"])))
        assert names, f"{board}/{title}: no metric in {target['expr']}"
        assert names <= known, f"{board}/{title}: {names - known} not in docs/metrics.md"


@serve.deployment
class Boom:
    async def __call__(self, request: object) -> None:
        raise ValueError("this deployment always fails")


BUCKET = "dashboard-adapters"


@pytest.fixture(scope="module")
def s3_adapters() -> Iterator[str]:
    """Two adapters and one that fails to load, in a bucket of a moto S3 server (moto keeps
    every server's buckets in one process-wide store: the bucket's name is this test's)."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    cache = tempfile.mkdtemp(prefix="llmserve-lora-cache-")
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "LLMSERVE_CACHE_DIR": cache}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket=BUCKET)
    loras = tiny_model_with_loras(num_loras=2) / "loras"
    for name, source in (("a0", "lora-0"), ("a1", "lora-1"), ("garbled", "lora-0")):
        for path in sorted((loras / source).iterdir()):
            body = path.read_bytes()
            if name == "garbled" and path.name == "adapter_config.json":
                body = b'{"r": 8, "peft_type": '
            client.put_object(Bucket=BUCKET, Key=f"loras/{name}/{path.name}", Body=body)
    try:
        yield f"s3://{BUCKET}/loras"
    finally:
        server.stop()
        shutil.rmtree(cache, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def gateway(s3_adapters: str) -> Iterator[str]:
    serve.shutdown()
    model_dir = str(cached_tiny_model())
    lora_dir = tiny_model_with_loras(num_loras=2)
    sim = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "sim", "model_source": model_dir},
        "llm_engine": "sim", "deployment_config": {"num_replicas": 2}})
    lora = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "lora", "model_source": str(lora_dir)},
        "llm_engine": "sim", "lora_config": {"dynamic_lora_loading_path": s3_adapters,
                                             "max_num_adapters_per_replica": 1}})
    # the gateway hashes blocks of 32 tokens, the engine publishes blocks of 16: its
    # events cannot be used and the replica is counted as degraded
    mismatch = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "kv-mismatch", "model_source": model_dir},
        "llm_engine": "sim", "routing_config": {"policy": "prefix_aware", "block_size": 32}})
    serve.run(build_openai_app({"llm_configs": [sim, lora, mismatch], "api_keys": [KEY]}),
              port=0)
    pool = {"model_loading_config": {"model_id": "pd", "model_source": model_dir},
            "llm_engine": "sim"}
    serve.run(build_pd_openai_app({"prefill_config": pool, "decode_config": pool,
                                   "api_keys": [KEY]}), name="pd", route_prefix="/pd")
    serve.run(Boom.bind(), name="boom", route_prefix="/boom")
    yield serve.http_url()
    serve.shutdown()


@pytest.fixture(scope="module")
def prometheus(gateway: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert PROMETHEUS is not None
    workdir = tmp_path_factory.mktemp("prometheus")
    host = gateway.removeprefix("http://")
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())  # the shipped file, pointed here
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["llmserve"]["static_configs"][0]["targets"] = [host]
    sd = jobs["llmserve-engines"]["http_sd_configs"][0]
    sd.update(url=f"{gateway}/metrics/engines", refresh_interval="1s")
    # the P/D app is a second gateway, at /pd
    config["scrape_configs"].append({"job_name": "llmserve-pd", "metrics_path": "/pd/metrics",
                                     "static_configs": [{"targets": [host]}]})
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(workdir / "log.txt").open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _ready(url):
            assert process.poll() is None, (workdir / "log.txt").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


async def drive_load(gateway: str, seconds: float) -> None:
    system = "You are a careful assistant who answers about the weather. " * 8
    headers = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:
        async def one(i: int) -> None:
            body = {"model": "sim", "max_tokens": 8,
                    "messages": [{"role": "system", "content": system},
                                 {"role": "user", "content": f"question {i % 5}"}]}
            if i % 2:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
                async with client.stream("POST", f"{gateway}/v1/chat/completions",
                                         json=body) as response:
                    assert response.status_code == 200
                    async for _ in response.aiter_lines():
                        pass
            else:
                response = await client.post(f"{gateway}/v1/chat/completions", json=body)
                assert response.status_code == 200

        async def other_models(i: int) -> None:
            """An adapter each time (one resident per replica: each load evicts the
            other), a prefill/decode request, a request to the degraded model."""
            adapter = await client.post(f"{gateway}/v1/completions", json={
                "model": f"lora:a{i % 2}", "prompt": "hello", "max_tokens": 2})
            assert adapter.status_code == 200, adapter.text
            pd = {"model": "pd", "max_tokens": 6, "stream": True,
                  "stream_options": {"include_usage": True},
                  "messages": [{"role": "user", "content": f"split {i} " * 20}]}
            async with client.stream("POST", f"{gateway}/pd/v1/chat/completions",
                                     json=pd) as response:
                assert response.status_code == 200
                async for _ in response.aiter_lines():
                    pass
            mismatch = await client.post(f"{gateway}/v1/completions", json={
                "model": "kv-mismatch", "prompt": f"blocks {i} " * 40, "max_tokens": 2})
            assert mismatch.status_code == 200, mismatch.text

        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            await asyncio.gather(*(one(i + k) for k in range(4)), other_models(i // 4))
            i += 4
        garbled = await client.post(f"{gateway}/v1/completions", json={
            "model": "lora:garbled", "prompt": "hello", "max_tokens": 2})
        assert garbled.status_code == 400, garbled.text
        boom = await client.get(f"{gateway}/boom")
        assert boom.status_code == 500
        unauthorized = await client.post(f"{gateway}/v1/chat/completions", json={},
                                         headers={"authorization": "Bearer wrong"})
        assert unauthorized.status_code == 401


def test_every_panel_has_data_on_a_real_prometheus(gateway: str, prometheus: str) -> None:
    deadline = time.monotonic() + 60
    while len([r for r in query(prometheus, "up") if r["value"][1] == "1"]) < 3:
        assert time.monotonic() < deadline, query(prometheus, "up")  # gateway + 2 engines
        time.sleep(0.5)
    asyncio.run(drive_load(gateway, seconds=6.0))
    targets = panels()
    pending = {(b, t, tg["expr"]) for b, t, tg in targets if t not in NOT_EXERCISED}
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        pending = {p for p in pending if not has_data(query(prometheus, concrete(p[2])))}
        if pending:
            time.sleep(1.0)
    assert not pending, "panels without data:\n" + "\n".join(
        f"{board} / {title}: {expr}" for board, title, expr in sorted(pending))
    listed = {t for _, t, _ in targets}
    assert set(NOT_EXERCISED) <= listed  # the exemptions name real panels
    # the other direction: every catalogued metric is exported (scraped here), or listed
    catalogue = read_catalogue()
    assert set(NOT_EXPORTED_HERE) <= set(catalogue)
    scraped = {r["metric"]["__name__"] for r in query(
        prometheus, 'count by (__name__) ({__name__=~"llmserve_.+|vllm:.+"})')}
    exported = {name for name, entry in catalogue.items() if series_names(entry) & scraped}
    missing = set(catalogue) - exported - set(NOT_EXPORTED_HERE)
    assert not missing, f"catalogued in docs/metrics.md but never exported: {sorted(missing)}"
    stale = exported & set(NOT_EXPORTED_HERE)
    assert not stale, f"exported after all, drop them from NOT_EXPORTED_HERE: {sorted(stale)}"
