"""Poll until a condition holds, with a deadline: the one way tests wait for something.

``eventually(lambda: x == 1)`` returns as soon as the condition is true (or, for a
function that raises ``AssertionError``, returns without raising) and fails with the
last value or error once ``timeout_s`` has passed. No test sleeps a fixed time before
asserting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.02,
               what: str = "") -> T:
    """The first truthy result of ``check()`` (an ``AssertionError`` counts as not yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        last, error = _try(check)
        if error is None and last:
            return last
        if time.monotonic() >= deadline:
            raise _timeout(what or _describe(check), timeout_s, last, error)
        time.sleep(interval_s)


async def eventually_async(check: Callable[[], T | Awaitable[T]], timeout_s: float = 10.0,
                           interval_s: float = 0.02, what: str = "") -> T:
    """`eventually` on an event loop; ``check`` may be a coroutine function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        error: AssertionError | None = None
        last: T | None = None
        try:
            result = check()
            last = await result if isinstance(result, Awaitable) else result  # type: ignore[assignment]
        except AssertionError as exc:
            error = exc
        if error is None and last:
            return last
        if loop.time() >= deadline:
            raise _timeout(what or _describe(check), timeout_s, last, error)
        await asyncio.sleep(interval_s)


def _try(check: Callable[[], T]) -> tuple[T | None, AssertionError | None]:
    try:
        return check(), None
    except AssertionError as exc:
        return None, exc


def _describe(check: Callable[..., object]) -> str:
    return getattr(check, "__qualname__", repr(check))


def _timeout(what: str, timeout_s: float, last: object,
             error: AssertionError | None) -> AssertionError:
    detail = f"last error: {error}" if error is not None else f"last value: {last!r}"
    failure = AssertionError(f"{what} did not hold within {timeout_s} s ({detail})")
    failure.__cause__ = error
    return failure
