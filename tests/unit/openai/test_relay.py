"""RelayedStream under real uvicorn: the direct path and the plain-ASGI path relay alike."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from llmserve.openai.relay import (
    AsgiWriter,
    DirectWriter,
    Outcome,
    Relay,
    RelayedStream,
)
from llmserve.serve.proxy import _ResponseWatch

USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def sse_pieces(count: int, size: int) -> list[bytes]:
    pieces = [b"data: " + json.dumps({"i": i, "pad": "x" * size}).encode() + b"\n\n"
              for i in range(count)]
    pieces.append(b"data: " + json.dumps({"choices": [], "usage": USAGE}).encode() + b"\n\n")
    pieces.append(b"data: [DONE]\n\n")
    return pieces


CONNECTIONS: list[int] = []


async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Streams the SSE pieces each request body asks for, one chunk each; keep-alive."""
    CONNECTIONS.append(1)
    try:
        while not reader.at_eof():
            await answer(reader, writer)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    ask = json.loads(await reader.readexactly(length))
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                 b"transfer-encoding: chunked\r\n\r\n")
    pieces = sse_pieces(ask["count"], ask["size"])
    if ask.get("split"):  # each event in two chunks: the relay must not cut one short
        pieces = [half for p in pieces for half in (p[:len(p) // 2], p[len(p) // 2:])]
    if ask.get("die_mid_event"):
        pieces = pieces[:5]  # ends inside an event
    for piece in pieces:
        writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        await writer.drain()
        await asyncio.sleep(ask.get("gap_s", 0))
    if ask.get("die_mid_event"):
        raise ConnectionError("engine died")
    await asyncio.sleep(ask.get("end_gap_s", 0))  # [DONE] sent, the body not ended yet
    writer.write(b"0\r\n\r\n")
    await writer.drain()


class Gateway:
    """An ASGI app relaying every request to the scripted engine."""

    def __init__(self, engine_url: str, plain_asgi: bool, watched: bool = False) -> None:
        self.engine_url = engine_url
        self.plain_asgi = plain_asgi
        self.watched = watched  # behind the serving core proxy's response watch
        self.relay = Relay()
        self.outcomes: list[Outcome] = []
        self.writers: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        upstream = await self.relay.open(self.engine_url + "/v1/completions", body, {})
        outcome = Outcome()
        if self.plain_asgi:
            async def plain(message: Any) -> None:  # hides uvicorn's cycle behind a closure
                await send(message)
        stream = RelayedStream(upstream, {"x-request-id": "r"}, outcome, self.outcomes.append)
        if self.watched:
            send = _ResponseWatch(send, FirstOutputs(), "replica-1", "request-1")  # type: ignore[arg-type]
        await stream(scope, receive, plain if self.plain_asgi else send)
        self.writers.append(type(stream.writer).__name__)


class FirstOutputs:
    """The router side of the proxy's response watch: counts first outputs."""

    def __init__(self) -> None:
        self.count = 0

    def first_output(self, replica: object, request: object) -> None:
        self.count += 1


@pytest.fixture
async def engine_url() -> AsyncIterator[str]:
    CONNECTIONS.clear()
    server = await asyncio.start_server(engine, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()


async def serve_gateway(app: Gateway) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", http="httptools")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(("plain_asgi", "watched"), [(False, False), (True, False),
                                                     (False, True)],
                         ids=["direct", "plain-asgi", "direct-behind-proxy-watch"])
@pytest.mark.parametrize("slow_client", [False, True], ids=["fast-client", "slow-client"])
async def test_stream_relayed_intact(engine_url: str, plain_asgi: bool, watched: bool,
                                     slow_client: bool) -> None:
    app = Gateway(engine_url, plain_asgi, watched)
    server, task, url = await serve_gateway(app)
    count, size = (300, 8000) if slow_client else (50, 10)  # 2.4 MB overflows the buffers
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(2):  # the second request reuses the engine connection
                async with client.stream("POST", url, json={"count": count,
                                                            "size": size}) as response:
                    assert response.headers["content-type"] == "text/event-stream"
                    assert response.headers["x-request-id"] == "r"
                    if slow_client:
                        await asyncio.sleep(0.5)  # let the gateway's writes back up
                    got = b"".join([part async for part in response.aiter_raw()])
                assert got == b"".join(sse_pieces(count, size))
    finally:
        server.should_exit = True
        await task
        await app.relay.close()
    assert [o.usage for o in app.outcomes] == [USAGE, USAGE]
    assert all(o.first_chunk_s is not None and o.error is None for o in app.outcomes)
    expected = (AsgiWriter if plain_asgi else DirectWriter).__name__
    assert app.writers == [expected, expected]
    assert len(CONNECTIONS) == 1  # keep-alive: one engine connection served both


def test_first_chunk_calls_its_callback_once_and_contains_its_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    from llmserve.openai.relay import Outcome

    calls: list[int] = []
    outcome = Outcome(on_first_chunk=lambda: calls.append(1))
    outcome.first_chunk()
    outcome.first_chunk()
    assert calls == [1] and outcome.first_chunk_s is not None

    def broken() -> None:
        raise RuntimeError("policy bug")

    failing = Outcome(on_first_chunk=broken)
    with caplog.at_level("ERROR", logger="llmserve.openai"):
        failing.first_chunk()  # logged, not raised
    assert failing.first_chunk_s is not None and "on_first_chunk callback failed" in caplog.text


@pytest.mark.parametrize("plain_asgi", [False, True], ids=["direct", "plain-asgi"])
async def test_engine_dying_mid_event_ends_in_a_whole_error_event(engine_url: str,
                                                                  plain_asgi: bool) -> None:
    app = Gateway(engine_url, plain_asgi)
    server, task, url = await serve_gateway(app)
    try:
        async with httpx.AsyncClient() as client:
            split = await client.post(url, json={"count": 4, "size": 10, "split": True})
            assert split.content == b"".join(sse_pieces(4, 10))
            dying = await client.post(url, json={"count": 4, "size": 10, "split": True,
                                                 "die_mid_event": True})
    finally:
        server.should_exit = True
        await task
        await app.relay.close()
    events = [e for e in dying.content.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    data = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert [d.get("i") for d in data[:-1]] == [0, 1]  # the two whole events, nothing cut
    assert data[-1]["error"]["code"] == "bad_gateway"
    assert [o.status for o in app.outcomes] == [200, 502]  # a failed stream is not a 200


async def test_a_client_leaving_a_plain_asgi_stream_leaves_no_task_behind(
        engine_url: str) -> None:
    app = Gateway(engine_url, plain_asgi=True)
    server, task, url = await serve_gateway(app)
    try:
        body = {"count": 50, "size": 10, "gap_s": 0.05}
        async with httpx.AsyncClient() as client, \
                client.stream("POST", url, json=body) as response:
            async for _ in response.aiter_raw():
                break  # leave after the first piece
        deadline = asyncio.get_running_loop().time() + 3
        while app.outcomes == [] and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert app.outcomes and app.outcomes[0].disconnected
        await asyncio.sleep(0.1)
        leftover = [t for t in asyncio.all_tasks() if "Event.wait" in repr(t)]
        assert leftover == []
    finally:
        server.should_exit = True
        await task
        await app.relay.close()


@pytest.mark.parametrize("plain_asgi", [False, True], ids=["direct", "plain-asgi"])
async def test_a_client_closing_after_done_has_a_complete_stream(engine_url: str,
                                                                 plain_asgi: bool) -> None:
    """The official sync client closes the connection as soon as it reads ``[DONE]``,
    maybe before the engine ends its body: the request succeeded all the same."""
    app = Gateway(engine_url, plain_asgi)
    server, task, url = await serve_gateway(app)
    try:
        async with httpx.AsyncClient() as client, \
                client.stream("POST", url, json={"count": 3, "size": 10,
                                                 "end_gap_s": 1.0}) as response:
            got = b""
            async for part in response.aiter_raw():
                got += part
                if got.endswith(b"data: [DONE]\n\n"):
                    break  # leaves, as openai's Stream does
        deadline = asyncio.get_running_loop().time() + 3
        while app.outcomes == [] and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
    finally:
        server.should_exit = True
        await task
        await app.relay.close()
    assert got == b"".join(sse_pieces(3, 10))
    [outcome] = app.outcomes
    assert not outcome.disconnected and outcome.error is None and outcome.status == 200
    assert outcome.usage == USAGE
