"""A lean HTTP/1.1 client for the engine hop: an asyncio protocol with httptools' parser.

The gateway relays every token of every stream, so the per-chunk path matters more than
anything else here: a chunk arriving from the engine is parsed in C and handed to a plain
callback (the *sink*) from ``data_received``, with no coroutine switch, future or timer
reschedule per chunk. Connections are kept alive and reused per engine address.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

from llmserve.openai.tls import client_ssl_context, default_port

Sink = Callable[[bytes], None]
Address = tuple[str, int, bool]  # host, port, TLS


class UpstreamError(Exception):
    """The engine connection failed after the request was sent."""


class UpstreamConnectError(UpstreamError):
    """The engine could not be reached: it never saw the request (safe to retry)."""


class UpstreamClosedEarly(UpstreamError):
    """The engine closed the connection after the request was sent, before answering: it
    may have started on the request (or crashed because of it), so it is not retried."""


class UpstreamReadTimeout(UpstreamError):
    """The engine sent nothing for longer than the read timeout."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an engine; one request at a time."""

    def __init__(self, pool: UpstreamPool, key: Address) -> None:
        self.pool = pool
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.parked_s = 0.0
        self.sent_s = 0.0
        self.idle = False  # parked in the pool, no request on it
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head: asyncio.Future[None] = self.loop.create_future()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.body: list[bytes] = []
        self.sink: Sink | None = None
        self.got_bytes = False
        self.keep_alive = False
        self.last_data_s = 0.0

    # ---- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.idle:  # bytes nobody asked for must not reach the next request
            self.close()
            return
        self.got_bytes = True
        self.last_data_s = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"engine sent malformed HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if not self.got_bytes:
            self._fail(UpstreamClosedEarly(f"engine closed the connection before answering"
                                           f"{f': {exc}' if exc else ''}"))
        else:
            self._fail(UpstreamError(f"engine closed the connection mid-response"
                                     f"{f': {exc}' if exc else ''}"))

    # ---- httptools callbacks --------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink(body)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside this callback
        if not self.done.done():
            self.done.set_result(None)

    # ---- use ------------------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        for future in (self.head, self.done):
            if not future.done():
                future.set_exception(exc)
                future.exception()  # mark retrieved: nobody may be waiting on `done` yet

    def send_request(self, raw: bytes) -> None:
        assert self.transport is not None
        self.idle = False
        self.sent_s = self.loop.time()
        self.transport.write(raw)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        """Drop the connection (an engine aborts the request when its client goes away)."""
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()

    def release(self) -> None:
        """Give a fully read connection back to the pool for the next request."""
        reusable = (self.done.done() and not self.done.exception()
                    and self.keep_alive and not self.closed)
        if reusable:
            self._reset()
            self.pool.park(self)
        else:
            self.close()


class UpstreamResponse:
    """The engine's answer once its status line and headers are in."""

    def __init__(self, conn: UpstreamConnection, read_timeout_s: float | None) -> None:
        self.conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self.read_timeout_s = read_timeout_s

    async def read(self) -> bytes:
        """The whole body (then the connection goes back to the pool)."""
        await self._wait(self.conn.done)
        body = b"".join(self.conn.body)
        self.conn.release()
        return body

    def stream_to(self, sink: Sink) -> asyncio.Future[None]:
        """Hand each body piece to ``sink`` as it arrives; the future ends with the body."""
        conn = self.conn
        if conn.body:  # pieces that came with the headers
            for piece in conn.body:
                sink(piece)
            conn.body.clear()
        conn.sink = sink
        return conn.done

    async def wait_done(self) -> None:
        await self._wait(self.conn.done)

    def close(self) -> None:
        self.conn.close()

    def release(self) -> None:
        self.conn.release()

    async def _wait(self, future: asyncio.Future[None]) -> None:
        await wait_reading(self.conn, future, self.read_timeout_s)


async def wait_reading(conn: UpstreamConnection, future: asyncio.Future[None],
                       read_timeout_s: float | None) -> None:
    """Await ``future``; fail when the engine sends nothing for ``read_timeout_s``.

    One timer per wait, re-armed only when it fires, not per chunk.
    """
    if read_timeout_s is None:
        await asyncio.shield(future)
        return
    loop = conn.loop
    conn.last_data_s = max(conn.last_data_s, loop.time())
    while True:
        idle = loop.time() - conn.last_data_s
        remaining = read_timeout_s - idle
        if remaining <= 0:
            raise UpstreamReadTimeout(f"engine sent nothing for {read_timeout_s:g} s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), remaining)
            return


# Parked connections idle longer than this are dropped instead of reused: engines'
# servers (uvicorn: 5 s) close idle connections, and reusing one at that instant fails.
MAX_IDLE_S = 4.0
# A reused connection closed within this long after the request was written was being
# closed for idleness as we reused it; the request is sent again on a fresh connection.
IDLE_RACE_S = 0.05


class UpstreamPool:
    """Keep-alive connections per engine address."""

    def __init__(self, connect_timeout_s: float = 5.0,
                 read_timeout_s: float | None = 600.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._idle: dict[Address, list[UpstreamConnection]] = {}
        self._all: set[UpstreamConnection] = set()

    def park(self, conn: UpstreamConnection) -> None:
        conn.parked_s = conn.loop.time()
        conn.idle = True
        self._idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def _connect(self, key: Address) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        host, port, tls = key
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self, key), host, port,
                                       ssl=client_ssl_context() if tls else None),
                self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc!r}") from exc
        self._all.add(conn)
        return conn

    async def request(self, method: str, url: str, body: bytes,
                      headers: dict[str, str]) -> UpstreamResponse:
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        key = (host, parts.port or default_port(parts.scheme), parts.scheme == "https")
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        head = [f"{method} {target or '/'} HTTP/1.1", f"host: {parts.netloc}",
                f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        idle = self._idle.get(key)
        while idle:  # a parked connection may have been closed by the engine meanwhile
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.loop.time() - conn.parked_s > MAX_IDLE_S:
                conn.close()  # the engine may be closing it right now
                continue
            try:
                return await self._send(conn, raw)
            except UpstreamClosedEarly:
                if conn.loop.time() - conn.sent_s > IDLE_RACE_S:
                    raise  # the engine had time to start on it: not safe to send again
                continue  # closed as we reused it: an idle close racing our request
        return await self._send(await self._connect(key), raw)

    async def _send(self, conn: UpstreamConnection, raw: bytes) -> UpstreamResponse:
        conn.send_request(raw)
        try:
            await wait_reading(conn, conn.head, self.read_timeout_s)
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(conn, self.read_timeout_s)

    async def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()

