"""Hostile request inputs end in a clear OpenAI-format error, never a 500 or a stall."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults.conftest import AUTH
from tests.faults.harness import MODEL, Gateway, SimEngine, assert_invariants, poll

CHAT = [{"role": "user", "content": "hello"}]
LOOPS = ("{% for i in range(30000) %}{% for j in range(30000) %}{% endfor %}{% endfor %}"
         "{{ messages[0]['content'] }}")


def post(gateway: Gateway, body: object, headers: dict[str, str] | None = None,
         path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(gateway.url + path, json=body, headers=headers or AUTH, timeout=30)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code


@pytest.mark.parametrize("body", [
    {"model": MODEL, "messages": CHAT, "max_tokens": 2, "chat_template": LOOPS},
    {"model": MODEL, "messages": CHAT, "max_tokens": 2,
     "chat_template_kwargs": {"chat_template": LOOPS}},
])
def test_request_supplied_chat_template_is_refused_before_rendering(
        gateway: Gateway, engines: list[SimEngine], body: dict[str, object]) -> None:
    fds = gateway.open_fds()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post, gateway, body)
        started = time.monotonic()
        health = httpx.get(f"{gateway.url}/health", timeout=5)
        assert health.status_code == 200
        assert time.monotonic() - started < 3.0  # rendering it would hold the loop ~27 s
        response = answer.result()
    assert_error(response, 400)
    assert "chat_template" in response.json()["error"]["message"]
    assert_invariants(gateway, engines, fds)


def test_tokenize_with_a_chat_template_is_refused_too(gateway: Gateway) -> None:
    response = post(gateway, {"model": MODEL, "messages": CHAT, "chat_template": LOOPS},
                    path="/tokenize")
    assert_error(response, 400)


def test_non_ascii_bearer_token_is_401(gateway: Gateway, engines: list[SimEngine]) -> None:
    fds = gateway.open_fds()
    for token in ("kł".encode(), b"\xff\xfe", "密钥".encode()):
        response = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=10,
                              headers=[(b"authorization", b"Bearer " + token)],
                              json={"model": MODEL, "messages": CHAT})
        assert_error(response, 401, "invalid_api_key")
    assert_invariants(gateway, engines, fds)


def test_deeply_nested_json_is_400(gateway: Gateway, engines: list[SimEngine]) -> None:
    fds = gateway.open_fds()
    nested = b"[" * 50_000 + b"]" * 50_000
    for body in (nested, b'{"model": "sim", "messages": ' + nested + b"}"):
        response = httpx.post(f"{gateway.url}/v1/chat/completions", content=body,
                              headers={**AUTH, "content-type": "application/json"},
                              timeout=10)
        assert_error(response, 400, "invalid_request")
    assert_invariants(gateway, engines, fds)


@pytest.mark.parametrize("header", [b"x-request-id", b"x-session-id"])
def test_non_utf8_routing_headers_are_400(gateway: Gateway, engines: list[SimEngine],
                                          header: bytes) -> None:
    fds = gateway.open_fds()
    response = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=10,
                          headers=[(b"authorization", AUTH["authorization"].encode()),
                                   (header, b"\xff\xfe\x80 bad")],
                          json={"model": MODEL, "messages": CHAT, "max_tokens": 2})
    assert_error(response, 400, "invalid_request")
    assert header.decode() in response.json()["error"]["message"]
    assert_invariants(gateway, engines, fds)


def test_client_leaving_during_upload_is_quiet(gateway: Gateway,
                                               engines: list[SimEngine]) -> None:
    fds = gateway.open_fds()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                         b"authorization: " + AUTH["authorization"].encode() + b"\r\n"
                         b"content-type: application/json\r\ncontent-length: 100000\r\n\r\n"
                         b'{"model": "sim", "messages": [')
            time.sleep(0.2)  # the gateway is reading the body when the client goes
    assert_invariants(gateway, engines, fds)


def test_non_streaming_client_leaving_aborts_the_engine_request(
        gateway: Gateway, engines: list[SimEngine]) -> None:
    fds = gateway.open_fds()
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 1500, "ignore_eos": True}
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, f"{gateway.url}/v1/chat/completions", json=body,
                             headers=AUTH, timeout=1.5)
        poll(lambda: sum(e.busy() for e in engines) == 1, 5, "the engine runs the request")
        with pytest.raises(httpx.ReadTimeout):
            answer.result()
    poll(lambda: sum(e.busy() for e in engines) == 0, 3, "the engine request is aborted")
    assert_invariants(gateway, engines, fds)
