"""Overload past every limit: each ends in its own clear error, and nothing is left over."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from llmserve import serve
from llmserve.llm import build_openai_app
from tests.faults.conftest import gateway_log
from tests.faults.harness import MODEL, Gateway, SimEngine, assert_invariants

CHAT = [{"role": "user", "content": "hello"}]
BODY = {"model": MODEL, "messages": CHAT, "max_tokens": 4}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def limited(model_dir: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Gateway, SimEngine]]:
    engine = SimEngine(model_dir).start()
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [
        {"key": "rpm-key", "name": "three-a-minute", "requests_per_minute": 3},
        {"key": "tpm-key", "name": "few-tokens", "tokens_per_minute": 10},
        {"key": "other-key", "name": "other-models", "models": ["not-sim"]},
        {"key": "burst-key", "name": "burst", "tokens_per_minute": 1000},
    ]}))
    gateway = Gateway([engine.url], gateway_log(tmp_path_factory),
                      args=["--api-key-file", str(keys)])
    gateway.start()
    try:
        yield gateway, engine
    finally:
        gateway.stop()
        engine.stop()


def post(gateway: Gateway, key: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=BODY, headers=auth(key),
                      timeout=30)


def test_requests_per_minute_per_key(limited: tuple[Gateway, SimEngine]) -> None:
    gateway, engine = limited
    fds = gateway.open_fds()
    assert [post(gateway, "rpm-key").status_code for _ in range(3)] == [200] * 3
    over = post(gateway, "rpm-key")
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert "three-a-minute" in over.json()["error"]["message"]
    assert 1 <= int(over.headers["retry-after"]) <= 20
    assert post(gateway, "tpm-key").status_code == 200  # other keys are not affected
    assert_invariants(gateway, [engine], fds)


def test_tokens_per_minute_per_key(limited: tuple[Gateway, SimEngine]) -> None:
    gateway, _ = limited
    first = post(gateway, "tpm-key")  # leaves it overdrawn (prompt + answer > 10 tokens)
    assert first.status_code in (200, 429)
    over = post(gateway, "tpm-key")
    assert over.status_code == 429
    assert "tokens per minute" in over.json()["error"]["message"]
    assert int(over.headers["retry-after"]) >= 1


def test_concurrent_requests_cannot_together_overdraw_tokens_per_minute(
        limited: tuple[Gateway, SimEngine]) -> None:
    """Ten requests at once, each able to use ~230 tokens, on a key with 1000 a minute:
    each holds its estimate (body bytes / 4 + max_tokens) from admission on, so only as
    many run as the budget covers, and together they use no more than it."""
    gateway, engine = limited
    fds = gateway.open_fds()
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 200, "ignore_eos": True}
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: httpx.post(
            f"{gateway.url}/v1/chat/completions", json=body, headers=auth("burst-key"),
            timeout=60), range(10)))
    done = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(done) + len(refused) == 10
    assert 1 <= len(done) <= 4, [a.status_code for a in answers]
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
    used = sum(a.json()["usage"]["total_tokens"] for a in done)
    assert used <= 1000, used
    assert_invariants(gateway, [engine], fds)


def test_model_allow_list(limited: tuple[Gateway, SimEngine]) -> None:
    gateway, _ = limited
    refused = post(gateway, "other-key")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"


def test_body_and_header_limits(limited: tuple[Gateway, SimEngine]) -> None:
    gateway, engine = limited
    fds = gateway.open_fds()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"authorization: Bearer rpm-key\r\ncontent-type: application/json\r\n"
                     b"content-length: 999999999999\r\n\r\n{")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    huge = httpx.get(f"{gateway.url}/health", headers={"x-big": "a" * 200_000}, timeout=10)
    assert huge.status_code == 431
    assert_invariants(gateway, [engine], fds)


@pytest.mark.usefixtures("fresh_serve")
def test_a_body_that_stops_arriving_is_408(limited: tuple[Gateway, SimEngine],
                                            tmp_path: Path) -> None:
    _, engine = limited
    serve.run(build_openai_app({"worker_urls": [engine.url], "body_read_timeout_s": 0.5}),
              port=0)
    url = serve.http_url()
    assert url is not None
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{")
        sock.settimeout(10)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in answer
