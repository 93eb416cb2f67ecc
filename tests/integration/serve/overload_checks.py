"""What an overloaded call deep in a graph must look like over HTTP, on any runtime."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx


def assert_one_served_rest_rejected(url: str, calls: int = 4, seconds: float = 1.5) -> None:
    """``calls`` requests at once to a path whose innermost deployment takes one at a time
    and queues none: one is served, the others answer 503 with Retry-After and an
    OpenAI-style error body (not a 500, and one response each)."""
    with ThreadPoolExecutor(calls) as pool:
        responses = list(pool.map(
            lambda _: httpx.get(url, params={"seconds": seconds}, timeout=30), range(calls)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] + [503] * (calls - 1), [(r.status_code, r.text) for r in responses]
    for rejected in (r for r in responses if r.status_code == 503):
        assert rejected.headers["retry-after"] == "1"
        assert rejected.headers["content-type"] == "application/json"
        error = rejected.json()["error"]
        assert error["code"] == "overloaded" and error["type"] == "server_error"
        assert "Busy" in error["message"] and error["param"] is None


@contextmanager
def server_errors() -> Iterator[list[logging.LogRecord]]:
    """What this process's uvicorn logs as errors meanwhile ("Exception in ASGI
    application": e.g. a route's 500 followed by a second response start). Uvicorn's
    loggers do not propagate to the root logger, so pytest's caplog does not see them."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
