"""`llmserve serve --prefill-replicas 1 --decode-replicas 2 --log-format json`: a
disaggregated request writes exactly one access-log line, naming both replicas."""

from __future__ import annotations

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

CHAT = [{"role": "user", "content": "split me into prefill and decode " * 4}]


def test_one_access_line_per_disaggregated_request_with_both_replicas(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    with log.open("w") as out:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "llmserve.cli", "serve", "--engine", "sim",
             "--model", str(cached_tiny_model()), "--model-id", "sim", "--port", str(port),
             "--prefill-replicas", "1", "--decode-replicas", "2", "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health", 120, gateway)
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        client.chat.completions.create(model="sim", max_tokens=3, messages=CHAT,  # type: ignore[arg-type]
                                       extra_headers={"x-request-id": "pd-plain"})
        stream = client.completions.create(
            model="sim", max_tokens=4, prompt="stream it " * 20, stream=True,
            stream_options={"include_usage": True}, extra_headers={"x-request-id": "pd-stream"})
        assert sum(1 for _ in stream) > 0
        bad = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                         headers={"x-request-id": "pd-bad"},
                         json={"model": "sim", "messages": "not a list", "max_tokens": 2})
        assert bad.status_code == 400  # the prefill engine's own error
        wanted = {"pd-plain", "pd-stream", "pd-bad"}
        deadline = time.monotonic() + 30
        while not wanted <= {r["request_id"] for r in access_lines(log)}:
            assert gateway.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(0.5)  # a second line for the same request would be written by now
    finally:
        gateway.terminate()
        gateway.wait(30)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for record in access_lines(log):
        by_id.setdefault(record["request_id"], []).append(record)
    (plain,), (streamed,), (failed,) = (by_id[i] for i in ("pd-plain", "pd-stream", "pd-bad"))
    for record, route, tokens in ((plain, "/v1/chat/completions", 3),
                                  (streamed, "/v1/completions", 4)):
        assert record["status"] == 200 and record["model_name"] == "sim"
        assert record["route"] == route
        assert record["completion_tokens"] == tokens and record["prompt_tokens"] > 0
        assert record["replica"] and record["prefill_replica"]
        assert record["replica"] != record["prefill_replica"]
    assert streamed["ttft_ms"] > 0
    assert failed["status"] == 400 and failed["model_name"] == "sim"
