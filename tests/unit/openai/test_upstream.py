"""The engine-hop HTTP client against scripted servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from llmserve.openai.errors import BadGateway
from llmserve.openai.relay import EngineConnectError, Relay
from llmserve.openai.upstream import (
    UpstreamClosedEarly,
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamReadTimeout,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve_with() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[Server, str]]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[Server, str]:
        state = Server(handler)
        server = await asyncio.start_server(state._serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return state, f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()


def keep_alive_echo(state_requests: list[tuple[bytes, bytes]]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            state_requests.append((head, body))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%b" % (len(body), body))
            await writer.drain()
    return handler


async def test_whole_body_and_keep_alive_reuse(serve_with) -> None:  # type: ignore[no-untyped-def]
    requests: list[tuple[bytes, bytes]] = []
    state, url = await serve_with(keep_alive_echo(requests))
    pool = UpstreamPool()
    for i in range(3):
        response = await pool.request("POST", url + "/v1/x?a=1", b'{"i": %d}' % i,
                                      {"x-request-id": f"r{i}"})
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        assert await response.read() == b'{"i": %d}' % i
    assert state.connections == 1  # one connection served all three
    head = requests[2][0].decode()
    assert head.startswith("POST /v1/x?a=1 HTTP/1.1\r\n")
    assert "x-request-id: r2" in head and "content-length: 8" in head
    await pool.close()


async def test_streamed_pieces_reach_the_sink_as_they_come(serve_with) -> None:  # type: ignore[no-untyped-def]
    gate = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"one"))
        await writer.drain()
        await gate.wait()
        writer.write(chunk(b"two") + b"0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    _, url = await serve_with(handler)
    pool = UpstreamPool()
    response = await pool.request("POST", url + "/s", b"{}", {})
    pieces: list[bytes] = []
    done = response.stream_to(pieces.append)
    for _ in range(100):
        if pieces:
            break
        await asyncio.sleep(0.01)
    assert pieces == [b"one"] and not done.done()  # the first piece did not wait for more
    gate.set()
    await response.wait_done()
    assert pieces == [b"one", b"two"]
    response.release()
    await pool.close()


async def test_a_parked_connection_the_engine_closed_is_replaced(serve_with) -> None:  # type: ignore[no-untyped-def]
    async def one_request_per_connection(reader: asyncio.StreamReader,
                                         writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        # claims keep-alive, then closes anyway (an idle timeout racing our reuse)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    state, url = await serve_with(one_request_per_connection)
    pool = UpstreamPool()
    for _ in range(3):
        response = await pool.request("POST", url + "/", b"", {})
        assert await response.read() == b"ok"
        await asyncio.sleep(0.05)
    assert state.connections == 3
    await pool.close()


async def test_unreachable_engine_is_a_connect_error() -> None:
    pool = UpstreamPool(connect_timeout_s=1.0)
    with pytest.raises(UpstreamConnectError):
        await pool.request("POST", "http://127.0.0.1:1/v1/x", b"", {})


async def test_silence_longer_than_the_read_timeout(serve_with) -> None:  # type: ignore[no-untyped-def]
    async def stalls_mid_stream(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(4):  # keeps sending for longer than the timeout: not idle
            writer.write(chunk(b"t"))
            await writer.drain()
            await asyncio.sleep(0.1)
        await asyncio.sleep(5)

    _, url = await serve_with(stalls_mid_stream)
    pool = UpstreamPool(read_timeout_s=0.25)
    response = await pool.request("POST", url + "/", b"", {})
    pieces: list[bytes] = []
    response.stream_to(pieces.append)
    with pytest.raises(UpstreamReadTimeout):
        await response.wait_done()
    assert len(pieces) == 4  # pieces kept the stream alive past 0.25 s until they stopped
    response.close()
    await pool.close()


async def test_engine_closing_mid_stream_fails_the_stream(serve_with) -> None:  # type: ignore[no-untyped-def]
    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"a"))
        await writer.drain()

    _, url = await serve_with(dies)
    pool = UpstreamPool()
    response = await pool.request("POST", url + "/", b"", {})
    response.stream_to(lambda piece: None)
    with pytest.raises(UpstreamError, match="mid-response"):
        await response.wait_done()
    await pool.close()


async def test_malformed_answer_is_an_error(serve_with) -> None:  # type: ignore[no-untyped-def]
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    _, url = await serve_with(garbage)
    pool = UpstreamPool()
    with pytest.raises(UpstreamError):
        await pool.request("POST", url + "/", b"", {})
    await pool.close()


async def test_connections_idle_too_long_are_not_reused(  # type: ignore[no-untyped-def]
        serve_with, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmserve.openai import upstream

    monkeypatch.setattr(upstream, "MAX_IDLE_S", 0.05)
    requests: list[tuple[bytes, bytes]] = []
    state, url = await serve_with(keep_alive_echo(requests))
    pool = UpstreamPool()
    first = await pool.request("POST", url + "/", b"1", {})
    assert await first.read() == b"1"
    second = await pool.request("POST", url + "/", b"2", {})  # at once: reused
    assert await second.read() == b"2"
    assert state.connections == 1
    await asyncio.sleep(0.1)
    third = await pool.request("POST", url + "/", b"3", {})  # idle too long: a new one
    assert await third.read() == b"3"
    assert state.connections == 2
    await pool.close()


async def test_engine_closing_after_reading_the_request_is_not_retried(serve_with) -> None:  # type: ignore[no-untyped-def]
    async def crashes_on_it(reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        state.requests.append((b"", b""))
        await asyncio.sleep(0.2)  # works on it for a while, then dies

    state, url = await serve_with(crashes_on_it)
    relay = Relay()
    with pytest.raises(BadGateway, match="before answering"):  # not EngineConnectError
        await relay.open(url + "/", b"{}", {})
    assert len(state.requests) == 1
    with pytest.raises(EngineConnectError):
        await relay.open("http://127.0.0.1:1/", b"{}", {})
    await relay.close()
    assert issubclass(UpstreamClosedEarly, UpstreamError)
    assert not issubclass(UpstreamClosedEarly, UpstreamConnectError)


async def test_bytes_on_an_idle_connection_never_reach_the_next_request(serve_with) -> None:  # type: ignore[no-untyped-def]
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _, body = await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b"
                         % (len(body), body))
            await writer.drain()
            await asyncio.sleep(0.05)  # idle now: an unsolicited answer arrives
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale")
            await writer.drain()

    state, url = await serve_with(chatty)
    pool = UpstreamPool()
    first = await pool.request("POST", url + "/", b"one", {})
    assert await first.read() == b"one"
    await asyncio.sleep(0.2)
    second = await pool.request("POST", url + "/", b"two", {})
    assert await second.read() == b"two"
    assert state.connections == 2  # the chatty idle connection was dropped
    await pool.close()
