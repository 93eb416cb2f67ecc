"""Two HTTP proxies on one port (``reuse_port``), as the driver's and a node's proxy
share one on Ray: both bind, both answer, and when one stops the other keeps serving."""

from __future__ import annotations

import httpx

from llmserve.serve.proxy import HttpProxy, serve_http
from tests.integration.serve.ports import free_port


async def test_two_proxies_share_a_port_and_one_outlives_the_other() -> None:
    port = free_port()
    proxy = HttpProxy(controller=None)  # type: ignore[arg-type]  # /-/healthz needs none
    first, first_task, first_port = await serve_http(proxy, "127.0.0.1", port,
                                                     reuse_port=True)
    second, second_task, second_port = await serve_http(proxy, "127.0.0.1", port,
                                                        reuse_port=True)
    assert first_port == second_port == port
    async with httpx.AsyncClient() as client:
        for _ in range(5):
            response = await client.get(f"http://127.0.0.1:{port}/-/healthz")
            assert response.text == "success"
    first.should_exit = True
    await first_task
    async with httpx.AsyncClient() as client:  # a new connection reaches the survivor
        assert (await client.get(f"http://127.0.0.1:{port}/-/healthz")).text == "success"
    second.should_exit = True
    await second_task
