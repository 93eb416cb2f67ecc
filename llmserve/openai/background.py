"""A periodic background step that logs its failures and keeps going."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("llmserve.openai")


async def keep_running(name: str, step: Callable[[], Awaitable[None]],
                       period_s: Callable[[], float] | float) -> None:
    """Run ``step`` every ``period_s`` until cancelled. An exception is logged (with its
    traceback the first time, then one line per failure) and the loop goes on."""
    failures = 0
    while True:
        try:
            await step()
            if failures:
                log.info("%s works again after %d failures", name, failures)
            failures = 0
        except Exception as exc:
            failures += 1
            if failures == 1:
                log.exception("%s failed; retrying", name)
            else:
                log.warning("%s failed again (%d in a row): %r", name, failures, exc)
        await asyncio.sleep(period_s() if callable(period_s) else period_s)
