"""The several-ingresses harness on the simulator's clock: simulated time, real routing."""

from __future__ import annotations

import asyncio
import contextlib
import time

from benchmarks.routing import virtual_time
from benchmarks.routing.ingresses_sim_clock import Settings, simulate


def test_the_loop_jumps_to_the_next_timer() -> None:
    async def sleeps() -> float:
        await asyncio.gather(asyncio.sleep(3600), asyncio.sleep(60))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 5)
        return asyncio.get_running_loop().time()

    started = time.monotonic()
    assert virtual_time.run(sleeps()) == 3605
    assert time.monotonic() - started < 5


def test_event_fed_ingresses_keep_the_hit_rate_that_guessing_ones_lose() -> None:
    settings = Settings(requests=96, qps=32.0)
    oracle = virtual_time.run(simulate("shared-prefix", "oracle", 1, settings))
    events = virtual_time.run(simulate("shared-prefix", "events", 4, settings))
    guesses = virtual_time.run(simulate("shared-prefix", "approximate", 4, settings))
    assert oracle["completed"] == events["completed"] == guesses["completed"] == 96
    assert events["prefix_cache_hit_rate"] >= 0.9 * oracle["prefix_cache_hit_rate"]
    assert guesses["prefix_cache_hit_rate"] < 0.9 * events["prefix_cache_hit_rate"]
    assert 0 < events["p90_ttft_ms"] < 1000  # simulated milliseconds
