"""Forward a request body to an engine's OpenAI endpoint and relay its answer.

Streams are relayed chunk by chunk as the engine sends them (no re-batching). A client
disconnect closes the upstream connection, which makes the engine abort the request.
Only what metrics need is parsed: the first chunk's arrival and the ``usage`` object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmserve.openai.errors import BadGateway, OpenAIError, UpstreamTimeout, sse_error_event

log = logging.getLogger("llmserve.openai")


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


class Relay:
    def __init__(self, connect_timeout_s: float = 5.0, read_timeout_s: float | None = 600.0):
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s,
                                              sock_read=read_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                                  auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def open(self, url: str, body: bytes, headers: dict[str, str],
                   method: str = "POST") -> aiohttp.ClientResponse:
        try:
            return await self.session().request(method, url, data=body, headers=headers)
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
            raise EngineConnectError(f"cannot reach engine at {url}: {exc}") from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"engine at {url} did not answer in time") from exc


async def read_whole(upstream: aiohttp.ClientResponse, outcome: Outcome,
                     receive: Receive) -> bytes | None:
    """Read a non-streamed answer; None when the client left first (upstream closed)."""
    reading = asyncio.ensure_future(upstream.read())
    leaving = asyncio.ensure_future(wait_disconnect(receive))
    try:
        done, _ = await asyncio.wait({reading, leaving}, return_when=asyncio.FIRST_COMPLETED)
        if reading not in done:
            outcome.disconnected = True
            return None
        body = reading.result()
    except aiohttp.ClientError as exc:
        raise BadGateway(f"engine connection failed: {exc}") from exc
    except TimeoutError as exc:
        raise UpstreamTimeout("engine did not finish in time") from exc
    finally:
        for task in (reading, leaving):
            task.cancel()
        upstream.release()
    outcome.first_chunk_s = time.monotonic()
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

    def __init__(self, upstream: aiohttp.ClientResponse, headers: dict[str, str],
                 outcome: Outcome, on_done: Callable[[Outcome], None]) -> None:
        self.status_code = upstream.status
        self.background = None
        content_type = upstream.headers.get("content-type", "text/event-stream")
        self.raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.raw_headers.append((b"content-type", content_type.encode()))
        self.upstream = upstream
        self.outcome = outcome
        self.on_done = on_done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome = self.outcome
        outcome.status = self.upstream.status
        relay = asyncio.ensure_future(self._relay(send, self.raw_headers))
        leaving = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait({relay, leaving}, return_when=asyncio.FIRST_COMPLETED)
            if not relay.done():
                outcome.disconnected = True
                log.info("client left mid-stream; aborting the engine request")
                relay.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await relay
        finally:
            leaving.cancel()
            self.upstream.close()  # closing (not releasing) makes the engine abort
            self.on_done(outcome)

    async def _relay(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        outcome = self.outcome
        await send({"type": "http.response.start", "status": self.upstream.status,
                    "headers": headers})
        previous = last = b""  # the end of the stream holds the usage event
        try:
            async for chunk in self.upstream.content.iter_any():
                if outcome.first_chunk_s is None:
                    outcome.first_chunk_s = time.monotonic()
                previous, last = last, chunk
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, TimeoutError) as exc:
            error: OpenAIError = (UpstreamTimeout("engine stopped sending tokens in time")
                                  if isinstance(exc, TimeoutError)
                                  else BadGateway(f"engine failed mid-stream: {exc}"))
            outcome.error = error.message
            await send({"type": "http.response.body", "body": sse_error_event(error),
                        "more_body": False})
            return
        outcome.usage = _usage_from_sse(previous + last)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _usage_from_sse(chunk: bytes) -> dict[str, Any] | None:
    for line in reversed(chunk.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            with contextlib.suppress(ValueError, AttributeError):
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    return usage  # type: ignore[no-any-return]
    return None
