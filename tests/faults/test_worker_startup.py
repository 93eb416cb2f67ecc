"""`llmserve serve --worker-urls` starts before its workers and takes each in when it is up."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from openai import OpenAI

from tests.faults.conftest import gateway_log
from tests.faults.harness import MODEL, Gateway, SimEngine, assert_invariants, poll

CHAT = [{"role": "user", "content": "hello"}]


def health(gateway: Gateway) -> httpx.Response:
    return httpx.get(f"{gateway.url}/health", timeout=5)


def test_workers_not_up_at_start_are_taken_in_when_they_come_up(
        model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    first, second = SimEngine(model_dir), SimEngine(model_dir)
    gateway = Gateway([first.url, second.url], gateway_log(tmp_path_factory),
                      args=["--model", model_dir])
    try:
        gateway.start(wait_healthy=False)  # /-/healthz: the gateway itself is up
        answer = health(gateway)
        assert answer.status_code == 503
        assert sorted(answer.json()["workers_not_ready"]) == sorted([first.url, second.url])
        status = subprocess.run([sys.executable, "-m", "llmserve.cli", "status", "--address",
                                 gateway.url], capture_output=True, text=True, timeout=60)
        assert f"workers not ready: {first.url}, {second.url}" in status.stdout, status
        early = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=10,
                           json={"model": MODEL, "messages": CHAT, "max_tokens": 2})
        assert early.status_code == 503
        assert early.headers["retry-after"]
        assert "not up yet" in early.json()["error"]["message"]

        first.start()
        poll(lambda: health(gateway).status_code == 200, 15, "first worker taken in")
        assert health(gateway).json()["workers_not_ready"] == [second.url]
        client = OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == [MODEL]
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)  # type: ignore[arg-type]

        second.start()
        poll(lambda: "workers_not_ready" not in health(gateway).json(), 15,
             "second worker taken in")
        fds = gateway.open_fds()
        for _ in range(4):
            client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)  # type: ignore[arg-type]
        assert_invariants(gateway, [first, second], fds)
    finally:
        gateway.stop()
        first.stop()
        second.stop()


def test_a_worker_not_up_within_the_startup_timeout_is_reported_failed(
        model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    up, never = SimEngine(model_dir), SimEngine(model_dir)
    up.start()
    gateway = Gateway([up.url, never.url], gateway_log(tmp_path_factory),
                      args=["--model", model_dir, "--worker-startup-timeout-secs", "1"])
    try:
        gateway.start()
        poll(lambda: health(gateway).json().get("workers_failed") == [never.url], 10,
             "the worker that never came up is reported failed")
        assert health(gateway).status_code == 200  # the model is served by the other
        assert f"{never.url} did not come up within 1 s" in gateway.log()
    finally:
        gateway.stop()
        up.stop()
