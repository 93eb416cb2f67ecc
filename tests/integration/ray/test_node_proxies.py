"""Node proxies (``proxy_location``): the controller runs one HTTP proxy actor per node
(or on the head only), each routing on its own from the membership long-poll; a killed
one is restarted by Ray, a node that joins gets one, a node that leaves loses it."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from llmserve import serve
from llmserve.serve.ray.names import NAMESPACE
from llmserve.serve.ray.proxy_actor import PROXY_NAME_PREFIX, node_proxies, node_proxy_urls
from tests.eventually import eventually
from tests.integration.ray.apps import InProxyWord, SlowPlain
from tests.integration.ray.conftest import RayCluster
from tests.integration.ray.http_load import wait_node_proxy_serving

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def _serving_proxies(nodes: set[str], timeout_s: float = 60.0) -> dict[str, str]:
    """Node id -> URL once exactly ``nodes`` have a proxy that serves ``/slow``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urls = node_proxy_urls(timeout_s=10)
            if set(urls) == nodes and all(
                    httpx.get(f"{url}/slow", timeout=10).status_code == 200
                    for url in urls.values()):
                return urls
        except Exception:
            urls = {}
        assert time.monotonic() < deadline, f"proxies {sorted(urls)} != {sorted(nodes)}"
        time.sleep(0.2)


def test_a_proxy_on_every_node_follows_the_node_list(ray_serve: RayCluster) -> None:
    import ray

    serve.run(SlowPlain.options(num_replicas=2).bind(), route_prefix="/slow", port=0,
              runtime="ray")  # proxy_location="EveryNode" is the default
    every = {ray_serve.head_node_id, *ray_serve.worker_node_ids}
    urls = _serving_proxies(every)
    for url in urls.values():
        assert httpx.get(f"{url}/-/routes", timeout=10).json() == {"/slow": "default"}
        status = httpx.get(f"{url}/-/status", timeout=10).json()
        assert status["applications"]["default"]["deployments"]["SlowPlain"][
            "running_replicas"] == 2

    worker = ray_serve.worker_node_ids[0]
    proxy = ray.get_actor(PROXY_NAME_PREFIX + worker, NAMESPACE)
    ray.kill(proxy, no_restart=False)
    for node, url in urls.items():  # the others keep serving
        if node != worker:
            assert httpx.get(f"{url}/slow", timeout=10).status_code == 200
    _serving_proxies(every)  # Ray restarts it on its node (a new port: port 0)

    cluster: Any = ray_serve.cluster
    joined = cluster.add_node(num_cpus=1)  # the controller notices the node and serves there
    urls = _serving_proxies(every | {joined.node_id})
    assert httpx.get(f"{urls[joined.node_id]}/slow", timeout=10).json()["pid"] > 0
    cluster.remove_node(joined)  # ... and drops the proxy of a node that died
    eventually(lambda: joined.node_id not in node_proxies(), timeout_s=60, interval_s=0.2,
               what="the dead node's proxy is removed")

    serve.shutdown()  # stops the proxies with the detached controller
    from ray.util import list_named_actors

    eventually(lambda: not [e for e in list_named_actors(all_namespaces=True)
                            if e["namespace"] == NAMESPACE],  # type: ignore[index]
               what="no named actor left")


def test_head_only_and_disabled(ray_serve: RayCluster) -> None:
    serve.run(SlowPlain.bind(), route_prefix="/slow", port=0, runtime="ray",
              proxy_location="HeadOnly")
    _serving_proxies({ray_serve.head_node_id})
    serve.shutdown()
    serve.run(SlowPlain.bind(), route_prefix="/slow", port=0, runtime="ray",
              proxy_location="Disabled")
    time.sleep(2.5)  # one round of the controller's node check
    assert node_proxies() == {}
    assert httpx.get(f"{serve.http_url()}/slow", timeout=10).status_code == 200


def test_in_proxy_copies_follow_user_config_without_restarting(
        ray_serve: RayCluster) -> None:
    import os

    import ray

    serve.run(InProxyWord.bind(), route_prefix="/word", port=0, runtime="ray",
              proxy_location="HeadOnly")
    head = ray_serve.head_node_id
    proxy_pid = ray.get(ray.get_actor(PROXY_NAME_PREFIX + head, NAMESPACE).pid.remote(),
                        timeout=60)
    head_url = wait_node_proxy_serving(head, "/word")
    urls = {os.getpid(): str(serve.http_url()), proxy_pid: head_url}
    instances = {}
    for pid, url in urls.items():  # each proxy answers from its own copy
        answer = httpx.get(f"{url}/word", timeout=10).json()
        assert (answer["word"], answer["pid"]) == ("one", pid)
        instances[pid] = answer["instance"]

    serve.run(InProxyWord.options(user_config={"word": "two"}).bind(), route_prefix="/word",
              port=0, runtime="ray", proxy_location="HeadOnly")
    for pid, url in urls.items():  # reconfigured in place: the same processes answer
        answer = eventually(lambda url=url: _word_answer(url, "two"), timeout_s=20)
        assert (answer["pid"], answer["instance"]) == (pid, instances[pid])


def _word_answer(url: str, word: str) -> dict[str, Any] | None:
    answer: dict[str, Any] = httpx.get(f"{url}/word", timeout=10).json()
    return answer if answer["word"] == word else None
