"""Forward a request body to an engine's OpenAI endpoint and relay its answer.

Streams are relayed piece by piece as the engine sends them (no re-batching). Under
uvicorn each piece goes from the engine socket's ``data_received`` straight into the
client's transport, framed exactly as uvicorn frames a chunked body: no coroutine switch
per token. Any other ASGI server gets the same bytes through plain ASGI ``send``. A client
disconnect closes the upstream connection, which makes the engine abort the request. Only
what metrics need is parsed: the first piece's arrival and the ``usage`` object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmserve.openai.errors import BadGateway, OpenAIError, UpstreamTimeout, sse_error_event
from llmserve.openai.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamReadTimeout,
    UpstreamResponse,
)

log = logging.getLogger("llmserve.openai")
EVENT_ENDS = (b"\n\n", b"\r\n\r\n")
DONE_EVENTS = (b"data: [DONE]\n\n", b"data: [DONE]\r\n\r\n")


class EngineConnectError(Exception):
    """The engine could not be reached: the request never started there (retryable)."""


@dataclass
class Outcome:
    """What the relay learned about one request, for metrics and routing hooks."""

    status: int = 0
    started_s: float = field(default_factory=time.monotonic)
    first_chunk_s: float | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    disconnected: bool = False
    on_first_chunk: Callable[[], None] | None = None  # called once, at the first chunk

    def first_chunk(self) -> None:
        self.first_chunk_s = time.monotonic()
        callback, self.on_first_chunk = self.on_first_chunk, None
        if callback is not None:
            try:
                callback()
            except Exception:  # a routing hook's fault must not break the client's stream
                log.exception("on_first_chunk callback failed")


class Relay:
    def __init__(self, connect_timeout_s: float = 5.0, read_timeout_s: float | None = 600.0):
        self.pool = UpstreamPool(connect_timeout_s, read_timeout_s)

    async def close(self) -> None:
        await self.pool.close()

    async def open(self, url: str, body: bytes, headers: dict[str, str],
                   method: str = "POST") -> UpstreamResponse:
        try:
            return await self.pool.request(method, url, body, headers)
        except UpstreamConnectError as exc:
            raise EngineConnectError(f"cannot reach engine at {url}: {exc}") from exc
        except UpstreamReadTimeout as exc:
            raise UpstreamTimeout(f"engine at {url} did not answer in time") from exc
        except UpstreamError as exc:
            raise BadGateway(f"engine connection failed: {exc}") from exc


async def read_whole(upstream: UpstreamResponse, outcome: Outcome,
                     leaving: asyncio.Future[None]) -> bytes | None:
    """Read a non-streamed answer; None when the client left first (upstream closed).

    ``leaving`` is the caller's disconnect watcher (``wait_disconnect``), started when
    the request was read: vLLM sends a non-streamed answer's headers only when it is
    done, so the client may leave long before them."""
    reading = asyncio.ensure_future(upstream.read())
    try:
        waits: set[asyncio.Future[Any]] = {reading, leaving}
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if reading not in done:
            outcome.disconnected = True
            upstream.close()
            return None
        body = reading.result()
    except UpstreamReadTimeout as exc:
        upstream.close()
        raise UpstreamTimeout("engine did not finish in time") from exc
    except UpstreamError as exc:
        upstream.close()
        raise BadGateway(f"engine connection failed: {exc}") from exc
    finally:
        reading.cancel()
    outcome.first_chunk()
    outcome.status = upstream.status
    if upstream.status == 200 and b'"usage"' in body:
        with contextlib.suppress(ValueError, AttributeError):
            outcome.usage = json.loads(body).get("usage")
    return body


async def wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class RelayedStream(Response):
    """An ASGI response that relays an upstream SSE stream as it arrives."""

    def __init__(self, upstream: UpstreamResponse, headers: dict[str, str],
                 outcome: Outcome, on_done: Callable[[Outcome], None]) -> None:
        self.status_code = upstream.status
        self.background = None
        content_type = upstream.headers.get("content-type", "text/event-stream")
        self.raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.raw_headers.append((b"content-type", content_type.encode()))
        self.upstream = upstream
        self.outcome = outcome
        self.on_done = on_done
        self.writer: Writer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome = self.outcome
        outcome.status = self.upstream.status
        reusable = False
        leaving = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": self.upstream.status,
                        "headers": self.raw_headers})
            writer = self.writer = (direct_writer(send, scope, outcome, self.upstream)
                                    or AsgiWriter(outcome, self.upstream, send))
            self.upstream.stream_to(writer.write)
            relay = asyncio.ensure_future(writer.run())
            await asyncio.wait({relay, leaving}, return_when=asyncio.FIRST_COMPLETED)
            if not relay.done():
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
                if writer.done_delivered:  # the client read everything (the sync openai
                    # client closes at [DONE], before the engine's body ends)
                    outcome.usage = _usage_from_sse(writer.previous + writer.last)
                    return
                outcome.disconnected = True
                log.info("client left mid-stream; aborting the engine request")
                return
            error = relay.exception()
            if error is None:
                outcome.usage = _usage_from_sse(writer.previous + writer.last)
                reusable = True
                await send({"type": "http.response.body", "body": writer.partial,
                            "more_body": False})
                return
            failure: OpenAIError = (
                UpstreamTimeout("engine stopped sending tokens in time")
                if isinstance(error, UpstreamReadTimeout)
                else BadGateway(f"engine failed mid-stream: {error}"))
            outcome.error = failure.message
            outcome.status = failure.status_code  # the stream failed, whatever it began as
            # the held-back partial event is dropped: the error event stands on its own
            await send({"type": "http.response.body", "body": sse_error_event(failure),
                        "more_body": False})
        finally:
            leaving.cancel()
            if reusable:
                self.upstream.release()
            else:
                self.upstream.close()  # closing the connection makes the engine abort
            self.on_done(outcome)


class Writer:
    """Takes each piece on its way to the client; notes first-token time and the tail.

    Only whole server-sent events go out: the engine's pieces may split an event, and an
    event cut short by a failing engine must not glue itself to the error event that
    follows, so a piece's incomplete tail is held back until the rest of it arrives.
    """

    def __init__(self, outcome: Outcome, upstream: UpstreamResponse) -> None:
        self.outcome = outcome
        self.upstream = upstream
        self.previous = self.last = b""  # the end of the stream holds the usage event
        self.partial = b""  # the start of an event not yet complete
        self.done_delivered = False  # the final [DONE] event went to the client

    def note(self, piece: bytes) -> None:
        if self.outcome.first_chunk_s is None:
            self.outcome.first_chunk()
        self.previous, self.last = self.last, piece

    def whole_events(self, piece: bytes) -> bytes:
        """``piece`` (after what was held back) up to its last event boundary."""
        if self.partial:
            piece, self.partial = self.partial + piece, b""
        if piece.endswith(EVENT_ENDS):  # the usual case: one or more whole events
            return piece
        lf, crlf = piece.rfind(b"\n\n"), piece.rfind(b"\r\n\r\n")
        cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        self.partial = piece[cut:]
        return piece[:cut]

    def write(self, piece: bytes) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        raise NotImplementedError


class DirectWriter(Writer):
    """Writes chunked-body frames straight to uvicorn's transport, as uvicorn would."""

    def __init__(self, outcome: Outcome, upstream: UpstreamResponse, cycle: Any) -> None:
        super().__init__(outcome, upstream)
        self.transport = cycle.transport
        self.flow = cycle.flow
        self._resuming: asyncio.Task[None] | None = None

    def write(self, piece: bytes) -> None:  # the per-token path: kept to one frame
        outcome = self.outcome
        if outcome.first_chunk_s is None:
            outcome.first_chunk()
        self.previous, self.last = self.last, piece
        transport = self.transport
        if transport.is_closing():
            return  # the client is gone; the disconnect watcher closes the upstream
        if self.partial or not piece.endswith(EVENT_ENDS):
            piece = self.whole_events(piece)
            if not piece:
                return
        transport.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        if piece.endswith(DONE_EVENTS):
            self.done_delivered = True
        if self.flow.write_paused and self._resuming is None:
            self.upstream.conn.pause_reading()  # a slow client slows the engine socket
            self._resuming = asyncio.ensure_future(self._resume_when_drained())

    async def _resume_when_drained(self) -> None:
        await self.flow.drain()
        self._resuming = None
        self.upstream.conn.resume_reading()

    async def run(self) -> None:
        try:
            await self.upstream.wait_done()
        finally:
            if self._resuming is not None:
                self._resuming.cancel()


def direct_writer(send: Send, scope: Scope, outcome: Outcome,
                  upstream: UpstreamResponse) -> DirectWriter | None:
    """A DirectWriter when ``send`` is uvicorn's and it chose chunked framing, else None.

    A ``send`` that only watches the response's start (the serving core's proxy wraps the
    server's) offers the server's own as ``wrapped_send`` once the response started."""
    while (inner := getattr(send, "wrapped_send", None)) is not None:
        send = inner
    cycle = getattr(send, "__self__", None)
    if cycle is None or scope.get("method") == "HEAD":
        return None
    needed = ("transport", "flow", "chunked_encoding", "response_complete")
    if not all(hasattr(cycle, name) for name in needed):
        return None
    if cycle.chunked_encoding is not True or cycle.response_complete:
        return None
    return DirectWriter(outcome, upstream, cycle)


class AsgiWriter(Writer):
    """Relays pieces through plain ASGI ``send`` (servers other than uvicorn)."""

    max_queued = 64

    def __init__(self, outcome: Outcome, upstream: UpstreamResponse, send: Send) -> None:
        super().__init__(outcome, upstream)
        self.send = send
        self.queue: deque[bytes] = deque()
        self.ready = asyncio.Event()
        self._paused = False

    def write(self, piece: bytes) -> None:
        self.note(piece)
        piece = self.whole_events(piece)
        if not piece:
            return
        self.queue.append(piece)
        self.ready.set()
        if len(self.queue) >= self.max_queued and not self._paused:
            self._paused = True
            self.upstream.conn.pause_reading()

    async def run(self) -> None:
        finished = asyncio.ensure_future(self.upstream.wait_done())
        waiting: asyncio.Future[Any] | None = None
        try:
            while True:
                waiting = asyncio.ensure_future(self.ready.wait())
                await asyncio.wait({finished, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                self.ready.clear()
                await self._flush()
                if finished.done():
                    await self._flush()
                    finished.result()  # raises the upstream's error, if any
                    return
        finally:
            finished.cancel()
            if waiting is not None:
                waiting.cancel()  # cancelled mid-wait (the client left): no task left over

    async def _flush(self) -> None:
        while self.queue:
            piece = self.queue.popleft()
            await self.send({"type": "http.response.body", "body": piece, "more_body": True})
            if piece.endswith(DONE_EVENTS):
                self.done_delivered = True
        if self._paused:
            self._paused = False
            self.upstream.conn.resume_reading()


def _usage_from_sse(chunk: bytes) -> dict[str, Any] | None:
    for line in reversed(chunk.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            with contextlib.suppress(ValueError, AttributeError):
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    return usage  # type: ignore[no-any-return]
    return None
