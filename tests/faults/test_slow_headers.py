"""A client that sends its headers slowly (slowloris) is cut off after the header read
timeout (``LLMSERVE_HEADER_READ_TIMEOUT_S``) with 408, while the gateway keeps answering."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.faults.harness import Gateway, SimEngine

TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def gateway(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    engine = SimEngine(model_dir, time_scale=0.25).start()  # a 400-token answer: ~3 s
    gw = Gateway([engine.url], tmp_path_factory.mktemp("gw") / "gateway.log",
                 args=["--model", model_dir],
                 env={"LLMSERVE_HEADER_READ_TIMEOUT_S": str(TIMEOUT_S)})
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()
        engine.stop()


def connect(gateway: Gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=10)


def read_until_closed(sock: socket.socket, budget_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and when it closed."""
    sock.settimeout(budget_s)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received, time.monotonic()


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a content-length (status line, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_dribbled_headers_are_cut_off_and_health_answers_meanwhile(gateway: Gateway) -> None:
    sock = connect(gateway)
    started = time.monotonic()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\nx-padding: " + b"a" * 200)
    closed_at = None
    try:
        for byte in head:  # one byte every 20 ms: 5 s for the whole head, never finished
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # the server closed it
                break
            if time.monotonic() - started > 0.5 and byte % 8 == 0:
                assert httpx.get(f"{gateway.url}/health", timeout=5).status_code == 200
            time.sleep(0.02)
        received, closed_at = read_until_closed(sock, 10)
    finally:
        sock.close()
    elapsed = closed_at - started
    assert TIMEOUT_S * 0.9 <= elapsed <= TIMEOUT_S + 2.0, elapsed
    assert received.startswith(b"HTTP/1.1 408 "), received


def test_a_connection_that_sends_nothing_is_closed(gateway: Gateway) -> None:
    sock = connect(gateway)
    started = time.monotonic()
    try:
        received, closed_at = read_until_closed(sock, 10)
    finally:
        sock.close()
    assert received == b""
    assert TIMEOUT_S * 0.9 <= closed_at - started <= TIMEOUT_S + 2.0


def test_requests_slower_than_the_timeout_are_not_cut_once_their_headers_are_in(
        gateway: Gateway) -> None:
    """The deadline covers the headers only: a body sent slowly (within the body read
    timeout), a long answer and a keep-alive pause longer than the deadline all pass."""
    body = b'{"model": "sim", "prompt": "hi", "max_tokens": 2}'
    sock = connect(gateway)
    try:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\ncontent-length: %d\r\n\r\n"
                     % len(body))
        time.sleep(TIMEOUT_S + 0.5)
        sock.sendall(body)
        first = read_response(sock)
        assert first.startswith(b"HTTP/1.1 200 ") and b'"text_completion"' in first, first
        time.sleep(TIMEOUT_S + 0.5)  # idle between requests: uvicorn's keep-alive applies
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
    finally:
        sock.close()
    with httpx.stream("POST", f"{gateway.url}/v1/completions", timeout=30, json={
            "model": "sim", "prompt": "hi", "max_tokens": 400, "stream": True,
            "ignore_eos": True}) as reply:
        assert reply.status_code == 200
        started = time.monotonic()
        events = sum(1 for line in reply.iter_lines() if line.startswith("data: {"))
    assert events >= 300
    assert time.monotonic() - started > TIMEOUT_S  # longer than the deadline, not cut
    assert "Traceback" not in gateway.log()
