"""Waiting on an engine while watching for the client to leave."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class ClientLeft(Exception):
    """The client disconnected before its answer started."""


async def until_left(work: Awaitable[T], leaving: asyncio.Future[None]) -> T:
    """``work``'s result, or ClientLeft (``work`` cancelled) if the client leaves first."""
    task = asyncio.ensure_future(work)
    if not leaving.done():
        waits: set[asyncio.Future[Any]] = {task, leaving}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientLeft
