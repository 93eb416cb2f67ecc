"""Concurrent HTTP load against the test apps' ``/slow`` route, with a failure injected."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx


async def load_with_kill(url: str, n: int, kill: Callable[[], object], *,
                         delay_s: float = 0.5, kill_after_s: float = 0.4) -> dict[int, int]:
    """``n`` staggered requests of ``delay_s`` each; ``kill()`` after ``kill_after_s``.

    Returns a count per status code. Every failure must be a clear OpenAI-style error;
    a request that hangs times out (30 s) and fails the test.
    """
    codes: dict[int, int] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        async def one(i: int) -> None:
            await asyncio.sleep(i * 0.02)
            response = await client.get(f"{url}/slow", params={"delay_s": delay_s})
            if response.status_code != 200:
                assert response.json()["error"]["code"] == "unavailable"
            codes[response.status_code] = codes.get(response.status_code, 0) + 1

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        await asyncio.sleep(kill_after_s)
        kill()
        await asyncio.gather(*tasks)
    return codes


def wait_node_proxy_serving(node_id: str, path: str, timeout_s: float = 60) -> str:
    """Wait until the node proxy on ``node_id`` answers ``path`` with 200; its URL."""
    import contextlib
    import time

    from llmserve.serve.ray.proxy_actor import node_proxy_urls

    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            url = node_proxy_urls(timeout_s=10)[node_id]
            if httpx.get(f"{url}{path}", timeout=10).status_code == 200:
                return url
        assert time.monotonic() < deadline, f"the proxy on node {node_id} does not serve {path}"
        time.sleep(0.2)
