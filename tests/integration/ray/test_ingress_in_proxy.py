"""On Ray, the OpenAI ingress runs in the HTTP proxy's process (no Ray call per chunk).

The ingress talks HTTP to its engines itself, so by default `build_openai_app` asks for
it to run next to the proxy (``ray_actor_options.in_proxy``): every proxy, the driver's
and each node's, runs its own copy; ``in_proxy: False`` gives it a Ray actor as before.
The simulated engine streams at ~20 ms a token (the 70B profile), slow enough to watch
the load the ingress reports while a stream is open.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import httpx
import pytest

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from llmserve.serve.instance import get_instance
from llmserve.serve.ray.cluster import replica_placements
from tests.fixtures_engines import cached_tiny_model
from tests.integration.ray.conftest import RayCluster
from tests.integration.ray.http_load import wait_node_proxy_serving

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]
TOKENS = 40


def _app(model_id: str, ingress_actor_options: dict[str, Any] | None = None) -> Any:
    cfg = LLMConfig.model_validate({
        "model_loading_config": {"model_id": model_id,
                                 "model_source": str(cached_tiny_model())},
        "llm_engine": "sim", "engine_kwargs": {"profile": "llama-3.1-70b-tp4-h100"},
        "deployment_config": {"ray_actor_options": {"num_cpus": 0.1}}})
    args: dict[str, Any] = {"llm_configs": [cfg]}
    if ingress_actor_options is not None:
        args["ingress_deployment_config"] = {"ray_actor_options": ingress_actor_options}
    return build_openai_app(args)


def _stream(url: str, model_id: str, on_chunk: Any = None) -> int:
    """Stream a completion; the number of content chunks."""
    body = {"model": model_id, "prompt": "hello there", "max_tokens": TOKENS,
            "stream": True, "ignore_eos": True}
    chunks = 0
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            if json.loads(line[6:])["choices"][0]["text"]:
                chunks += 1
                if on_chunk is not None:
                    on_chunk()
    return chunks


def _ingress_nodes(app_name: str) -> list[tuple[str, int]]:
    """(Ray node id, pid) of each ingress replica, as status shows them."""
    deployment = serve.status().applications[app_name].deployments["OpenAiIngress"]
    return [(r.node.node_id, r.node.pid) for r in deployment.replicas if r.node is not None]


def test_openai_ingress_runs_in_the_proxy_process(ray_serve: RayCluster) -> None:
    serve.run(_app("sim"), port=0, runtime="ray")
    url = str(serve.http_url())
    # status shows it in this (the driver's) process, on the head node
    assert _ingress_nodes("default") == [(ray_serve.head_node_id, os.getpid())]
    assert not [rid for rid in replica_placements() if rid.startswith("OpenAiIngress")]
    assert [rid for rid in replica_placements() if rid.startswith("LLMServer:sim#")]

    # the engine's load, as the ingress reports it, reaches the LLMServer autoscaler
    # while the stream is open (the membership's load reports do not overwrite it)
    router = get_instance().controller.router_for("default", "LLMServer:sim")
    loads: list[float] = []
    assert _stream(url, "sim", lambda: loads.append(router.load)) == TOKENS
    assert min(loads[5:-5]) >= 1, loads


def test_in_proxy_false_puts_the_ingress_in_an_actor(ray_serve: RayCluster) -> None:
    serve.run(_app("sim", {"in_proxy": False, "num_cpus": 0.1}), port=0, runtime="ray")
    url = str(serve.http_url())
    ((_, pid),) = _ingress_nodes("default")
    assert pid != os.getpid()
    assert [rid for rid in replica_placements() if rid.startswith("OpenAiIngress")]
    assert _stream(url, "sim") == TOKENS


def test_every_node_proxy_runs_its_own_ingress(ray_serve: RayCluster) -> None:
    # the controller actor only records the ingress replica; each node proxy (and the
    # driver) runs a copy of it in its own process
    import ray

    from llmserve.serve.ray.names import NAMESPACE
    from llmserve.serve.ray.proxy_actor import PROXY_NAME_PREFIX

    serve.run(_app("sim"), port=0, runtime="ray")  # proxy_location="EveryNode"
    worker = ray_serve.worker_node_ids[0]
    url = wait_node_proxy_serving(worker, "/v1/models")
    assert _stream(url, "sim") == TOKENS
    proxy_pid = ray.get(ray.get_actor(PROXY_NAME_PREFIX + worker, NAMESPACE).pid.remote())
    status = httpx.get(f"{url}/-/status", timeout=10).json()
    (replica,) = status["applications"]["default"]["deployments"]["OpenAiIngress"]["replicas"]
    assert (replica["node"]["node_id"], replica["node"]["pid"]) == (worker, proxy_pid)
    assert not [rid for rid in replica_placements() if rid.startswith("OpenAiIngress")]

    # a restarted controller records the ingress replica again under the same id, so
    # the proxies keep their copies
    from llmserve.serve.ray.names import CONTROLLER_NAME

    controller = ray.get_actor(CONTROLLER_NAME, NAMESPACE)
    old_pid = ray.get(controller.ping.remote())
    ray.kill(controller, no_restart=False)
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(Exception):
            if ray.get(controller.ping.remote(), timeout=5) != old_pid:
                break
        assert time.monotonic() < deadline, "the controller did not come back"
        time.sleep(0.2)
    assert [r.replica_id for r in serve.status().applications["default"]
            .deployments["OpenAiIngress"].replicas] == [replica["replica_id"]]
    assert _ingress_nodes("default") == [(ray_serve.head_node_id, os.getpid())]
    assert _stream(url, "sim") == TOKENS
