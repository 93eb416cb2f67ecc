"""The OpenAI gateway on the Ray runtime with simulated engines on (declared) GPU nodes."""

from __future__ import annotations

import os
import time

import httpx
import pytest
from openai import OpenAI

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from llmserve.serve.ray.cluster import replica_actor, replica_placements
from tests.fixtures_engines import cached_tiny_model
from tests.integration.ray.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]
CHAT = [{"role": "user", "content": "hello there"}]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_openai_app_on_ray_with_a_tp2_placement_group(ray_serve: RayCluster) -> None:
    model_dir = str(cached_tiny_model())
    tp2 = {"num_replicas": 2, "ray_actor_options": {
        "placement_group_bundles": [{"CPU": 0.1, "GPU": 1}, {"GPU": 1}],
        "placement_group_strategy": "STRICT_PACK"}}
    cfg = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "sim", "model_source": model_dir},
        "llm_engine": "sim", "deployment_config": tp2,
        "routing_config": {"policy": "round_robin"}})
    serve.run(build_openai_app({"llm_configs": [cfg],
                                "ingress_deployment_config": {
                                    "ray_actor_options": {"num_cpus": 0.1}}}),
              port=0, runtime="ray")
    url = str(serve.http_url())
    client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["sim"]
    reply = client.chat.completions.create(model="sim", messages=CHAT, max_tokens=4)
    assert reply.choices[0].message.content and reply.usage.completion_tokens == 4
    chunks = list(client.chat.completions.create(model="sim", messages=CHAT, max_tokens=5,
                                                 stream=True))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 5

    servers = {rid: p for rid, p in replica_placements().items()
               if rid.startswith("LLMServer:sim#")}
    assert {p.node_id for p in servers.values()} == set(ray_serve.worker_node_ids)
    assert all(len(p.gpu_ids) == 1 for p in servers.values())

    # kill one engine replica's actor: its engine process goes with it, a new one comes
    import ray

    handle = serve.get_deployment_handle("LLMServer:sim")
    victim_id = next(iter(servers))
    info = handle.options(replica_id=victim_id).endpoint.remote().result(timeout_s=30)
    assert info.pid and _alive(info.pid)
    ray.kill(replica_actor(victim_id))
    deadline = time.monotonic() + 30
    while _alive(info.pid) or len([r for r in replica_placements()
                                   if r.startswith("LLMServer:sim#")]) < 2 \
            or victim_id in replica_placements():
        assert time.monotonic() < deadline, "engine not reaped or replica not replaced"
        time.sleep(0.1)
    codes = [httpx.post(f"{url}/v1/chat/completions", timeout=30,
                        json={"model": "sim", "messages": CHAT, "max_tokens": 2}).status_code
             for _ in range(10)]
    assert set(codes) <= {200, 502, 503}
    # the ingress learns the new engine URL within its refresh period
    deadline = time.monotonic() + 20
    while httpx.post(f"{url}/v1/chat/completions", timeout=30,
                     json={"model": "sim", "messages": CHAT, "max_tokens": 2}).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
