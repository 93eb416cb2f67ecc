"""The header deadline on both of uvicorn's HTTP/1.1 protocols (h11 and httptools)."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llmserve.serve.header_deadline import header_read_timeout_s, with_header_deadline

DEADLINE_S = 0.5


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("base", [H11Protocol, HttpToolsProtocol])
async def test_slow_headers_get_408_and_prompt_ones_an_answer(base: type) -> None:
    config = uvicorn.Config(hello, host="127.0.0.1", port=0, lifespan="off",
                            log_level="warning", http=with_header_deadline(base, DEADLINE_S))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n")  # never finished
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert DEADLINE_S * 0.9 <= time.monotonic() - started < DEADLINE_S + 2
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(DEADLINE_S * 2)  # idle between requests: not the deadline's
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(DEADLINE_S * 2)
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n")  # the next request's, unfinished
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 408 ")  # from its first byte, not the idle time
        assert DEADLINE_S * 0.9 <= time.monotonic() - started < DEADLINE_S + 2
        writer.close()
    finally:
        server.should_exit = True
        await task


def test_the_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMSERVE_HEADER_READ_TIMEOUT_S", raising=False)
    assert header_read_timeout_s() == 30.0
    monkeypatch.setenv("LLMSERVE_HEADER_READ_TIMEOUT_S", "2.5")
    assert header_read_timeout_s() == 2.5
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("LLMSERVE_HEADER_READ_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="LLMSERVE_HEADER_READ_TIMEOUT_S"):
            header_read_timeout_s()
