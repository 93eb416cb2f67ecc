"""Keys stay secret (not in `ps`, logs or engines' environment); admin endpoints need
the admin key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from engines.process import EngineProcess
from tests.faults.conftest import gateway_log
from tests.faults.harness import MODEL, Gateway, SimEngine

API_KEY = "sk-client-0123456789"
ADMIN_KEY = "admin-9876543210"


def test_keys_are_not_visible_and_admin_endpoints_need_the_admin_key(
        model_dir: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    engine = SimEngine(model_dir).start()
    keys = tmp_path / "keys"
    keys.write_text(f"# clients\n{API_KEY}\n")
    gateway = Gateway([engine.url], gateway_log(tmp_path_factory),
                      args=["--api-key-file", str(keys)],
                      env={"LLMSERVE_ADMIN_KEY": ADMIN_KEY})
    try:
        gateway.start()
        assert gateway.proc is not None
        cmdline = Path(f"/proc/{gateway.proc.pid}/cmdline").read_bytes()
        assert API_KEY.encode() not in cmdline and ADMIN_KEY.encode() not in cmdline
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2}
        ok = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30,
                        headers={"authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        client = {"authorization": f"Bearer {API_KEY}"}
        for path in ("/metrics", "/-/status", "/-/routes"):
            assert httpx.get(gateway.url + path, timeout=10).status_code == 401, path
            assert httpx.get(gateway.url + path, headers=client,
                             timeout=10).status_code == 401, path
            assert httpx.get(gateway.url + path, headers=admin,
                             timeout=10).status_code == 200, path
        assert httpx.get(f"{gateway.url}/-/healthz", timeout=10).status_code == 200
        status = subprocess.run([sys.executable, "-m", "llmserve.cli", "status", "--address",
                                 gateway.url], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "LLMSERVE_ADMIN_KEY": ADMIN_KEY})
        assert status.returncode == 0 and "deployment OpenAiIngress" in status.stdout, status
        assert httpx.get(f"{gateway.url}/health", timeout=10).status_code == 200
        log = gateway.log()
        assert API_KEY not in log and ADMIN_KEY not in log
    finally:
        gateway.stop()
        engine.stop()


def test_gateway_credentials_never_reach_an_engines_environment() -> None:
    process = EngineProcess(["true"], env={"LLMSERVE_API_KEYS": "a,b",
                                           "LLMSERVE_ADMIN_KEY": "c", "KEEP": "1"})
    assert process.env == {"KEEP": "1"}
