"""A deadline for a request's headers (against slowloris clients).

uvicorn times out only an idle keep-alive connection between requests: a fresh connection
that sends nothing, or a client that sends its header lines a byte at a time, holds a
connection (and a file descriptor) for as long as it likes. This wraps uvicorn's HTTP
protocol so that a request's headers must be complete within ``timeout_s`` of the
connection opening or of the first byte of the request; otherwise the connection gets
``408 Request Timeout`` and is closed. The body has its own read timeout (the ingress's
``body_read_timeout_s``).

``LLMSERVE_HEADER_READ_TIMEOUT_S`` sets it (default 30 s) for every HTTP proxy started.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

HEADER_READ_TIMEOUT_ENV = "LLMSERVE_HEADER_READ_TIMEOUT_S"
DEFAULT_HEADER_READ_TIMEOUT_S = 30.0
_REASON = b"request headers were not sent in time"
TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
             b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(_REASON), _REASON))


def header_read_timeout_s() -> float:
    raw = os.environ.get(HEADER_READ_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_HEADER_READ_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"{HEADER_READ_TIMEOUT_ENV} must be a positive number of seconds, "
                         f"got {raw!r}")
    return value


def with_header_deadline(base: type[Any], timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class ``base`` (h11 or httptools) with the deadline.

    A connection notes when it began waiting for a request's headers; one timer per
    class (one class per proxy) closes those waiting past ``timeout_s``, checking every
    ``timeout_s / 4`` (at most every second) while connections are open, so a request
    costs a clock read, not a timer armed and cancelled."""
    sweep_s = min(1.0, timeout_s / 4)

    class HeaderDeadline(base):  # type: ignore[misc, valid-type]
        _waiting: set[Any]  # open connections (the class's sweep checks them)
        _sweep_timer: asyncio.TimerHandle | None = None
        _head_since: float | None = None  # loop time the headers began to be awaited
        _head_cycle: Any = None  # the request in progress when they did
        _head_bytes = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            cls = type(self)
            cls._waiting.add(self)
            self._arm()
            if cls._sweep_timer is None:
                cls._sweep_timer = self.loop.call_later(sweep_s, cls._sweep, self.loop)

        def data_received(self, data: bytes) -> None:
            if self._head_since is None and self._awaiting_head():
                self._arm()  # the first byte of the next request
            if self._head_since is not None:
                self._head_bytes = True
            super().data_received(data)
            if self._head_since is not None and not self._awaiting_head():
                self._head_since = None  # the headers are in: a request cycle started

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_since = None
            type(self)._waiting.discard(self)
            super().connection_lost(exc)

        def _awaiting_head(self) -> bool:
            cycle = self.cycle
            return cycle is None or cycle is self._head_cycle or cycle.response_complete

        def _arm(self) -> None:
            self._head_cycle = self.cycle
            self._head_bytes = False
            self._head_since = self.loop.time()

        @classmethod
        def _sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
            late = loop.time() - timeout_s
            for protocol in [p for p in cls._waiting
                             if p._head_since is not None and p._head_since <= late]:
                protocol._expire()
            cls._sweep_timer = (loop.call_later(sweep_s, cls._sweep, loop) if cls._waiting
                                else None)

        def _expire(self) -> None:
            self._head_since = None
            transport = self.transport
            if not self._awaiting_head() or transport.is_closing():
                return
            if self._head_bytes:
                transport.write(TIMED_OUT)
            transport.close()

    HeaderDeadline._waiting = set()
    HeaderDeadline.__name__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadline


def http_protocol(timeout_s: float | None = None) -> type[asyncio.Protocol]:
    """The protocol uvicorn would pick (``auto``), with the header deadline."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return with_header_deadline(AutoHTTPProtocol,
                                header_read_timeout_s() if timeout_s is None else timeout_s)
