"""`llmserve serve --prefill-replicas N --decode-replicas M` and `llmserve run` with
``import_path: llmserve.llm:build_pd_openai_app``, simulator engines, real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from openai import OpenAI

from benchmarks.cluster_procs import wait_http_ok
from tests.e2e.test_pd_sim import metric
from tests.fixtures_engines import cached_tiny_model
from tests.integration.serve.ports import free_port

ROOT = Path(__file__).resolve().parents[3]


def start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "llmserve.cli", *argv], cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


def served_by_both_pools(url: str, decode_replicas: int) -> None:
    client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    out = client.completions.create(model="tiny", prompt="hello " * 40, max_tokens=5)
    assert out.usage is not None and out.usage.completion_tokens == 5
    text = httpx.get(f"{url}/metrics", timeout=5).text
    assert metric(text, "llmserve_pd_requests_total", model_name="tiny", outcome="ok") == 1
    status = httpx.get(f"{url}/-/status", timeout=5).json()
    (app,) = status["applications"].values()
    running = {name: d["running_replicas"] for name, d in app["deployments"].items()}
    assert running["LLMServer:prefill:tiny"] == 1
    assert running["LLMServer:decode:tiny"] == decode_replicas


def test_serve_with_prefill_and_decode_replicas() -> None:
    port = free_port()
    proc = start(["serve", "--engine", "sim", "--model", str(cached_tiny_model()),
                  "--model-id", "tiny", "--prefill-replicas", "1", "--decode-replicas", "2",
                  "--port", str(port)])
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", 60, proc)
        served_by_both_pools(f"http://127.0.0.1:{port}", 2)
    finally:
        out = stop(proc)
    assert "ready at" in out, out


def test_serve_rejects_a_zero_pool() -> None:
    proc = start(["serve", "--engine", "sim", "--model", str(cached_tiny_model()),
                  "--prefill-replicas", "0", "--port", str(free_port())])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "--prefill-replicas must be >= 1" in out


def test_run_config_with_the_pd_builder(tmp_path: Path) -> None:
    model = cached_tiny_model()
    pool = (f"{{model_loading_config: {{model_id: tiny, model_source: {model}}}, "
            f"llm_engine: sim}}")
    config = tmp_path / "pd.yaml"
    config.write_text(
        "applications:\n"
        "  - name: pd\n"
        "    route_prefix: /\n"
        "    import_path: llmserve.llm:build_pd_openai_app\n"
        f"    args: {{prefill_config: {pool}, decode_config: {pool}}}\n")
    port = free_port()
    proc = start(["run", str(config), "--port", str(port)])
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", 60, proc)
        served_by_both_pools(f"http://127.0.0.1:{port}", 1)
    finally:
        out = stop(proc)
    assert "ready at" in out, out


def test_run_config_fronting_running_prefill_and_decode_engines(tmp_path: Path) -> None:
    from benchmarks.cluster_procs import sim_cluster

    model = str(cached_tiny_model())
    base = free_port()
    nixl = ("--kv-transfer-config", '{"kv_connector": "NixlConnector", "kv_role": "kv_both"}')
    with sim_cluster(model, 1, base, "tiny-cpu", 1.0, tmp_path / "p.log",
                     ("--served-model-name", "tiny", *nixl)) as prefill, \
            sim_cluster(model, 2, free_port(), "tiny-cpu", 1.0, tmp_path / "d.log",
                        ("--served-model-name", "tiny", *nixl)) as decode:
        args = {"prefill_worker_urls": prefill, "decode_worker_urls": decode,
                "worker_engine": "sim"}
        config = tmp_path / "pd.yaml"
        config.write_text(json.dumps({"applications": [{
            "name": "pd", "route_prefix": "/",
            "import_path": "llmserve.llm:build_pd_openai_app", "args": args}]}))
        port = free_port()
        proc = start(["run", str(config), "--port", str(port)])
        try:
            wait_http_ok(f"http://127.0.0.1:{port}/health", 60, proc)
            url = f"http://127.0.0.1:{port}"
            client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            out = client.completions.create(model="tiny", prompt="hi " * 40, max_tokens=4)
            assert out.usage is not None and out.usage.completion_tokens == 4
            text = httpx.get(f"{url}/metrics", timeout=5).text
            assert metric(text, "llmserve_pd_requests_total", outcome="ok") == 1
            prefill_done = metric(httpx.get(f"{prefill[0]}/metrics").text,
                                  "vllm:request_success_total")
            assert prefill_done == 1  # the prefill engine served the one-token prefill
            loaded = sum(metric(httpx.get(f"{u}/metrics").text,
                                "vllm:external_prefix_cache_hits_total") for u in decode)
            assert loaded == out.usage.prompt_tokens - 1  # the decode engine pulled the KV
        finally:
            stop(proc)
