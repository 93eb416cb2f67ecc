"""`llmserve run config.yaml` with Ray Serve's config schema, in a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from benchmarks.cluster_procs import wait_http_ok
from tests.integration.serve.ports import free_port

ROOT = Path(__file__).resolve().parents[3]


def start(*args: str) -> subprocess.Popen[str]:
    """`llmserve run ARGS...` in a subprocess."""
    return subprocess.Popen(
        [sys.executable, "-m", "llmserve.cli", "run", *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def test_run_config_file_with_builder_args_and_overrides(tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(
        "applications:\n"
        "  - name: hello\n"
        "    route_prefix: /hi\n"
        "    import_path: tests.integration.serve.sample_app:build\n"
        "    args: {greeting: bonjour}\n"
        "    deployments:\n"
        "      - name: Hello\n"
        "        num_replicas: 2\n"
    )
    port = free_port()
    proc = start(str(config), "--port", str(port))
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/hi", 30, proc)  # not a 404 before the app is up
        response = httpx.get(f"http://127.0.0.1:{port}/hi", timeout=2)
        assert response.json()["greeting"] == "bonjour"
        replicas = {httpx.get(f"http://127.0.0.1:{port}/hi").json()["replica"]
                    for _ in range(30)}
        assert len(replicas) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "ready at" in out


def test_bad_config_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("applications:\n  - import_path: no_such_module:app\n")
    proc = start(str(config), "--port", str(free_port()))
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "cannot import 'no_such_module'" in out


def test_run_an_import_path_with_builder_args() -> None:
    """`serve run module:builder key=value` in Ray Serve's habit."""
    port = free_port()
    proc = start("tests.integration.serve.sample_app:build", "greeting=hej",
                 "--route-prefix", "/hi", "--port", str(port))
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/hi", 30, proc)
        assert httpx.get(f"http://127.0.0.1:{port}/hi", timeout=2).json()["greeting"] == "hej"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out


def test_run_a_bound_application_by_import_path() -> None:
    port = free_port()
    proc = start("tests.integration.serve.sample_app:app", "--port", str(port))
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/", 30, proc)
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=2).json()["greeting"] == "hello"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
