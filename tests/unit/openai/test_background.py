"""Background loops log their failures and keep going."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from llmserve.openai.background import keep_running


async def test_a_failing_step_is_logged_and_the_loop_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    done = asyncio.Event()

    async def step() -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError(f"boom {len(calls)}")
        if len(calls) == 5:
            done.set()

    with caplog.at_level("INFO", logger="llmserve.openai"):
        task = asyncio.ensure_future(keep_running("test loop", step, 0.001))
        await asyncio.wait_for(done.wait(), 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(calls) == 5
    assert caplog.text.count("Traceback") == 1  # the first failure in full, then one line
    assert "failed again (3 in a row)" in caplog.text
    assert "works again after 3 failures" in caplog.text
