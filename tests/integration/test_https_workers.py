"""``https://`` worker URLs: the relay, the stats reads and the tokenizer calls speak TLS
(default port 443), verifying the engine's certificate against ``SSL_CERT_FILE``.

The engine is a simulated replica behind uvicorn with a self-signed certificate made here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from benchmarks.cluster_procs import stop, wait_http_ok
from engines.process import free_port
from llmserve.openai.upstream import UpstreamPool
from tests.faults.harness import poll
from tests.fixtures_engines import cached_tiny_model
from tests.integration.tls_sim import self_signed_cert

CHAT = [{"role": "user", "content": "hello there, how are you today?"}]


@pytest.fixture(scope="module")
def tls_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    """(https URL, certificate, served model name) of a slow simulated engine over TLS."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_cert(directory)
    model_dir = str(cached_tiny_model())
    port = free_port()
    with (directory / "engine.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.tls_sim", model_dir, str(port),
             str(cert), str(key), "0.2"], stdout=log, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", verify=str(cert), timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (directory / "engine.log").read_text()
            assert time.monotonic() < deadline, "the TLS engine did not come up"
            time.sleep(0.2)
        yield url, cert, model_dir
    finally:
        stop(proc)


def gateway_env(cert: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    if cert is not None:
        env["SSL_CERT_FILE"] = str(cert)
    return env


def test_gateway_relays_to_an_https_worker(tls_engine: tuple[str, Path, str],
                                           tmp_path: Path) -> None:
    url, cert, _ = tls_engine
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmserve.cli", "--log-level", "debug", "serve",
             "--engine", "sim", "--port", str(port), "--model-id", "tiny",
             "--worker-urls", url], stdout=log, stderr=subprocess.STDOUT,
            env=gateway_env(cert))
    try:
        wait_http_ok(f"{gateway}/health", 60, proc)
        client = OpenAI(base_url=f"{gateway}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        answer = client.chat.completions.create(model="tiny", messages=CHAT,  # type: ignore[arg-type]
                                                max_tokens=4)
        assert answer.choices[0].message.content
        stream = client.chat.completions.create(model="tiny", messages=CHAT,  # type: ignore[arg-type]
                                                max_tokens=400, stream=True)
        first = next(iter(stream))
        assert first.choices

        def engine_reports_running() -> bool:  # the stats read over TLS sees the stream
            text = httpx.get(f"{gateway}/metrics", timeout=5).text
            found = re.search(r"^llmserve_engine_requests_running\{[^}]*\} (\S+)$", text,
                              re.MULTILINE)
            return found is not None and float(found.group(1)) >= 1

        poll(engine_reports_running, 20, "the engine's stats read over https")
        stream.close()
        gateway_log = log_path.read_text()
        assert "no prompt tokens for routing" not in gateway_log  # /tokenize over https
        assert "routing 'tiny' on prompt characters" not in gateway_log
        assert "stats:" not in gateway_log
    finally:
        stop(proc)


def test_an_untrusted_certificate_is_not_accepted(tls_engine: tuple[str, Path, str],
                                                  tmp_path: Path) -> None:
    url, _, _ = tls_engine
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    with (tmp_path / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmserve.cli", "serve", "--engine", "sim", "--port",
             str(port), "--worker-urls", url, "--worker-startup-timeout-secs", "2"],
            stdout=log, stderr=subprocess.STDOUT, env=gateway_env(None))
    try:
        wait_http_ok(f"{gateway}/-/healthz", 60, proc)
        poll(lambda: httpx.get(f"{gateway}/health", timeout=5).json().get("workers_failed")
             == [url], 20, "the worker with an untrusted certificate reported failed")
    finally:
        stop(proc)


async def test_an_https_url_without_a_port_goes_to_443() -> None:
    """``https://host/`` without a port connects to port 443 (here: refused, quickly),
    not plain HTTP to port 80."""
    pool = UpstreamPool(connect_timeout_s=2.0)
    with pytest.raises(Exception, match=r"127\.0\.0\.1:443"):
        await pool.request("GET", "https://127.0.0.1/health", b"", {})
    await pool.close()
