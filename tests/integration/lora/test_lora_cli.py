"""`llmserve serve --lora-dir ... --lora-modules ... --max-loras-per-replica` in a real
subprocess (simulated engine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from benchmarks.cluster_procs import sim_cluster, wait_http_ok
from llmserve.llm.tiny_model import cached_tiny_model
from tests.integration.serve.ports import free_port

ROOT = Path(__file__).resolve().parents[3]


def serve_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "llmserve.cli", "serve", *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_serve_with_lora_dir_and_modules() -> None:
    model = cached_tiny_model(num_loras=3)
    port = free_port()
    proc = serve_cli("--model", str(model), "--model-id", "tiny", "--engine", "sim",
                     "--port", str(port), "--lora-dir", f"file://{model / 'loras'}",
                     "--lora-modules", f"mine={model / 'loras' / 'lora-2'}",
                     "--max-loras-per-replica", "2")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/health", 90, proc)  # its engine is up too
        cards = {c["id"]: c for c in httpx.get(f"{url}/v1/models").json()["data"]}
        assert set(cards) == {"tiny", "tiny:lora-0", "tiny:lora-1", "tiny:lora-2", "mine"}
        assert cards["mine"]["parent"] == "tiny"
        for model_id in ("tiny:lora-0", "tiny:lora-1", "mine"):
            answer = httpx.post(f"{url}/v1/completions", timeout=30, json={
                "model": model_id, "prompt": "hi", "max_tokens": 2})
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == model_id
        metrics = httpx.get(f"{url}/metrics").text
        assert 'llmserve_lora_adapter_evictions_total{model_name="tiny:lora-0"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


def test_worker_urls_with_lora_dir_loads_into_the_workers(tmp_path: Path) -> None:
    model = cached_tiny_model(num_loras=3)
    sim_port, port = free_port(), free_port()
    with sim_cluster(str(model), 1, sim_port, "tiny-cpu", 1.0, tmp_path / "sim.log",
                     ("--served-model-name", "base", "--max-loras", "1")) as urls:
        proc = serve_cli("--worker-urls", *urls, "--port", str(port),
                         "--lora-dir", str(model / "loras"), "--max-loras-per-replica", "1")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http_ok(f"{url}/v1/models", 90, proc)
            ids = {c["id"] for c in httpx.get(f"{url}/v1/models").json()["data"]}
            assert ids == {"base", "base:lora-0", "base:lora-1", "base:lora-2"}
            for model_id in ("base:lora-0", "base:lora-1"):
                answer = httpx.post(f"{url}/v1/completions", timeout=30, json={
                    "model": model_id, "prompt": "hi", "max_tokens": 2})
                assert answer.status_code == 200, answer.text
            worker = httpx.get(f"{urls[0]}/v1/models").json()["data"]
            assert [c["id"] for c in worker if c["parent"]] == ["base:lora-1"]  # one slot
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out


def finished(engine_url: str) -> int:
    """Requests the engine finished (its ``vllm:request_success_total``)."""
    lines = httpx.get(f"{engine_url}/metrics").text.splitlines()
    return int(sum(float(line.rpartition(" ")[2]) for line in lines
                   if line.startswith("vllm:request_success_total{")))


def test_worker_adapters_go_only_to_the_workers_listing_them(tmp_path: Path) -> None:
    model = cached_tiny_model(num_loras=3)
    with_adapter, without, port = free_port(), free_port(), free_port()
    adapter = f"only-here={model / 'loras' / 'lora-0'}"
    with sim_cluster(str(model), 1, with_adapter, "tiny-cpu", 1.0, tmp_path / "a.log",
                     ("--served-model-name", "base", "--lora-modules", adapter)) as listing, \
            sim_cluster(str(model), 1, without, "tiny-cpu", 1.0, tmp_path / "b.log",
                        ("--served-model-name", "base")) as other:
        proc = serve_cli("--worker-urls", *listing, *other, "--port", str(port),
                         "--routing", "round_robin")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http_ok(f"{url}/v1/models", 90, proc)
            cards = {c["id"]: c for c in httpx.get(f"{url}/v1/models").json()["data"]}
            assert set(cards) == {"base", "only-here"}
            assert cards["only-here"]["parent"] == "base"
            for _ in range(6):  # round robin would alternate; the adapter pins the worker
                answer = httpx.post(f"{url}/v1/completions", timeout=30, json={
                    "model": "only-here", "prompt": "hi", "max_tokens": 2})
                assert answer.status_code == 200, answer.text
            assert [finished(u) for u in (*listing, *other)] == [6, 0]
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
