"""`llmserve serve --log-format json`: one access-log JSON line per request, with the
fields operators need and a key identifier instead of the key."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from benchmarks.cluster_procs import wait_http_ok
from tests.e2e.conftest import access_lines, free_port
from tests.fixtures_engines import cached_tiny_model

KEY = "sk-access-log-secret-0123456789"


def test_json_access_log_has_one_line_per_request(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    with log.open("w") as out:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "llmserve.cli", "serve", "--engine", "sim",
             "--model", str(cached_tiny_model()), "--model-id", "sim", "--port", str(port),
             "--api-key", KEY, "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=out)  # stdout: the start-up snippet
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health", 120, gateway)
        client = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        client.chat.completions.create(model="sim", max_tokens=3,
                                       messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-request-id": "plain-1"})
        stream = client.chat.completions.create(
            model="sim", max_tokens=4, messages=[{"role": "user", "content": "hi"}],
            stream=True, stream_options={"include_usage": True},
            extra_headers={"x-request-id": "stream-1"})
        assert sum(1 for _ in stream) > 0
        assert httpx.post(f"{url}/v1/completions", json={},
                          headers={"x-request-id": "denied-1"}).status_code == 401
        wanted = {"plain-1", "stream-1", "denied-1"}
        deadline = time.monotonic() + 30
        while not wanted <= {r["request_id"] for r in access_lines(log)}:
            assert gateway.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        gateway.terminate()
        gateway.wait(30)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for record in access_lines(log):
        by_id.setdefault(record["request_id"], []).append(record)
    (plain,), (streamed,), (denied,) = (by_id[i] for i in ("plain-1", "stream-1", "denied-1"))
    expected_key_id = hashlib.sha256(KEY.encode()).hexdigest()[:12]
    assert plain["status"] == 200 and plain["model_name"] == "sim"
    assert plain["route"] == "/v1/chat/completions"
    assert plain["completion_tokens"] == 3 and plain["prompt_tokens"] > 0
    assert plain["ttft_ms"] is None and plain["duration_ms"] > 0
    assert plain["replica"] and plain["key_id"] == expected_key_id
    assert streamed["ttft_ms"] > 0 and streamed["completion_tokens"] == 4
    assert denied["status"] == 401 and denied["key_id"] == "" and denied["replica"] == ""
    assert KEY not in log.read_text()  # the key is in no log line
