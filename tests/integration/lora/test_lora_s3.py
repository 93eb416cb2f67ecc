"""Adapters from ``s3://`` served by a real S3-compatible server (moto in server mode),
read through s3fs: listing, the node-local cache, one download for concurrent first
requests, and 503 + Retry-After when the store cannot be reached."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from llmserve.llm.tiny_model import cached_tiny_model

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")

BUCKET = "adapters"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def upload(client: Any, source: Path, prefix: str) -> None:
    for path in sorted(source.iterdir()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "LLMSERVE_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket=BUCKET)
    loras = cached_tiny_model(num_loras=3) / "loras"
    for name in ("lora-0", "lora-1"):
        upload(client, loras / name, f"loras/{name}")
    yield {"server": server, "client": client, "loras": loras,
           "cache": Path(env["LLMSERVE_CACHE_DIR"]) / "lora"}
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def gateway(s3: dict[str, Any]) -> Iterator[dict[str, Any]]:
    model_dir = cached_tiny_model(num_loras=3)
    config = LLMConfig(model_loading_config={"model_id": "tiny", "model_source": str(model_dir)},
                       llm_engine="sim", deployment_config={"num_replicas": 2},
                       lora_config={"dynamic_lora_loading_path": f"s3://{BUCKET}/loras",
                                    "download_timeout_s": 3, "max_download_tries": 2})
    serve.shutdown()
    serve.run(build_openai_app({"llm_configs": [config]}), port=0)
    yield {"url": serve.http_url()}
    serve.shutdown()


@pytest.fixture(scope="module")
def client(gateway: dict[str, Any]) -> OpenAI:
    return OpenAI(base_url=gateway["url"] + "/v1", api_key="unused", max_retries=0)


def ask(client: OpenAI, model: str) -> str:
    return client.completions.create(model=model, prompt="hi", max_tokens=2).choices[0].text


def metric(gateway: dict[str, Any], name: str, adapter: str) -> float:
    prefix = f'{name}{{model_name="{adapter}"}} '
    lines = httpx.get(gateway["url"] + "/metrics").text.splitlines()
    return sum(float(line.removeprefix(prefix)) for line in lines if line.startswith(prefix))


def test_s3_adapters_are_listed_with_their_uri(client: OpenAI) -> None:
    cards = {m.id: m.model_dump() for m in client.models.list()}
    assert set(cards) == {"tiny", "tiny:lora-0", "tiny:lora-1"}
    assert cards["tiny:lora-1"]["root"] == f"s3://{BUCKET}/loras/lora-1"


def test_concurrent_first_requests_download_once(client: OpenAI, gateway: dict[str, Any],
                                                 s3: dict[str, Any]) -> None:
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(lambda _: ask(client, "tiny:lora-1"), range(8)))
    assert len(outputs) == 8
    assert metric(gateway, "llmserve_lora_adapter_downloads_total", "tiny:lora-1") == 1
    cached = [p for p in s3["cache"].rglob("*") if p.is_dir() and p.name == "lora-1"]
    assert len(cached) == 1
    assert {p.name for p in cached[0].iterdir()} >= {"adapter_config.json",
                                                     "adapter_model.safetensors"}
    assert not [p for p in s3["cache"].rglob("*.partial")]  # no half adapter left


def test_a_new_prefix_is_listed_without_restart(client: OpenAI, s3: dict[str, Any]) -> None:
    upload(s3["client"], s3["loras"] / "lora-2", "loras/lora-2")
    deadline = time.monotonic() + 20
    while "tiny:lora-2" not in {m.id for m in client.models.list()}:
        assert time.monotonic() < deadline, "lora-2 did not appear"
        time.sleep(0.3)
    assert ask(client, "tiny:lora-2")


def test_an_unreachable_store_is_503_with_retry_after(gateway: dict[str, Any],
                                                      s3: dict[str, Any]) -> None:
    s3["server"].stop()  # lora-0 is listed but was never downloaded
    started = time.monotonic()
    response = httpx.post(gateway["url"] + "/v1/completions", timeout=60,
                          json={"model": "tiny:lora-0", "prompt": "hi", "max_tokens": 2})
    assert response.status_code == 503
    assert response.headers["retry-after"]
    body = response.json()["error"]
    assert body["code"] == "adapter_unavailable"
    assert "could not fetch adapter `tiny:lora-0` after 2 tries" in body["message"]
    assert time.monotonic() - started < 2 * 3 + 5  # bounded by tries x download_timeout_s
