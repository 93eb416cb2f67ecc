"""Node proxies (``runtime="ray-detached"``): one HTTP proxy actor per node, each routing
on its own from the membership long-poll; a killed one is restarted by Ray."""

from __future__ import annotations

import time

import httpx
import pytest

from llmserve import serve
from llmserve.serve.ray.proxy_actor import PROXY_NAME_PREFIX, start_node_proxies
from llmserve.serve.ray_runtime import NAMESPACE
from tests.integration.ray.apps import SlowPlain
from tests.integration.ray.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


def test_a_proxy_on_every_node_serves_and_comes_back(ray_serve: RayCluster) -> None:
    import ray

    serve.run(SlowPlain.options(num_replicas=2).bind(), route_prefix="/slow", port=0,
              runtime="ray-detached")
    urls = start_node_proxies(port=0, host="127.0.0.1")
    assert set(urls) == {ray_serve.head_node_id, *ray_serve.worker_node_ids}
    for url in urls.values():
        assert httpx.get(f"{url}/slow", timeout=10).status_code == 200
        assert httpx.get(f"{url}/-/routes", timeout=10).json() == {"/slow": "default"}
        status = httpx.get(f"{url}/-/status", timeout=10).json()
        assert status["applications"]["default"]["deployments"]["SlowPlain"][
            "running_replicas"] == 2
    assert start_node_proxies(port=0, host="127.0.0.1") == urls  # found, not started again

    worker = ray_serve.worker_node_ids[0]
    proxy = ray.get_actor(PROXY_NAME_PREFIX + worker, NAMESPACE)
    ray.kill(proxy, no_restart=False)
    for node, url in urls.items():  # the others keep serving
        if node != worker:
            assert httpx.get(f"{url}/slow", timeout=10).status_code == 200
    deadline = time.monotonic() + 30
    while True:  # Ray restarts it on its node (on a new port: these tests bind port 0)
        try:
            new_url = ray.get(proxy.url.remote(), timeout=5)
            if httpx.get(f"{new_url}/slow", timeout=10).status_code == 200:
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, "the killed proxy did not come back"
        time.sleep(0.2)

    serve.shutdown()  # stops the proxies with the detached controller
    from ray.util import list_named_actors

    deadline = time.monotonic() + 10
    while [e for e in list_named_actors(all_namespaces=True)
           if e["namespace"] == NAMESPACE]:  # type: ignore[index]
        assert time.monotonic() < deadline, list_named_actors(all_namespaces=True)
        time.sleep(0.1)
