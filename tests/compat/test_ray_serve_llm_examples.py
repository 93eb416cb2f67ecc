"""Ray Serve LLM's documented examples, run with only the import changed.

The examples are the quick-start (builder pattern), the multi-model ``build_openai_app``
example with ``LLMServingArgs``, the YAML config file (``serve run config.yaml`` with
``import_path: ray.serve.llm:build_openai_app``, run by ``llmserve run``) and the multi-LoRA
example. This machine has no model hub and no GPU: ``tests/compat/machine.py`` lists the
only other changes (the local tiny model for ``model_source``, GPU-only ``engine_kwargs``
dropped, the simulator as engine; the quick-start also runs on real vLLM CPU in
``test_ray_serve_llm_vllm.py``). Each client call is the one the example's page shows.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

from benchmarks.cluster_procs import stop, wait_http_ok
from engines.process import free_port
from tests.compat.machine import on_this_machine, yaml_on_this_machine

pytestmark = pytest.mark.usefixtures("fresh_serve")


def stream_text(client: OpenAI, model: str) -> str:
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Hello!"}],
        stream=True,
    )
    text = ""
    for chunk in response:
        if chunk.choices and chunk.choices[0].delta.content is not None:
            text += chunk.choices[0].delta.content
    return text


def test_quick_start_builder_pattern() -> None:
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

    app = build_openai_app({"llm_configs": [on_this_machine(llm_config)]})
    serve.run(app, port=free_port())  # was: serve.run(app, blocking=True)

    client = OpenAI(base_url=f"{serve.http_url()}/v1", api_key="fake-key")
    assert stream_text(client, "qwen-0.5b")


def test_multi_model_with_llm_serving_args() -> None:
    from llmserve import serve  # was: from ray import serve
    from llmserve.llm import LLMConfig, LLMServingArgs, build_openai_app  # was: ray.serve.llm

    llm_config1 = LLMConfig(
        model_loading_config=dict(
            model_id="qwen-0.5b",
            model_source="Qwen/Qwen2.5-0.5B-Instruct",
        ),
        deployment_config=dict(
            autoscaling_config=dict(
                min_replicas=1, max_replicas=2,
            )
        ),
        accelerator_type="A10G",
    )

    llm_config2 = LLMConfig(
        model_loading_config=dict(
            model_id="qwen-1.5b",
            model_source="Qwen/Qwen2.5-1.5B-Instruct",
        ),
        deployment_config=dict(
            autoscaling_config=dict(
                min_replicas=1, max_replicas=2,
            )
        ),
        accelerator_type="A10G",
    )

    # Deploy the application
    llm_app = build_openai_app(
        LLMServingArgs(
            llm_configs=[
                on_this_machine(llm_config1),
                on_this_machine(llm_config2),
            ]
        )
    )
    serve.run(llm_app, port=free_port())

    # Querying the model via openai client
    client = OpenAI(base_url=f"{serve.http_url()}/v1", api_key="fake-key")
    assert sorted(m.id for m in client.models.list()) == ["qwen-0.5b", "qwen-1.5b"]
    for model in ("qwen-0.5b", "qwen-1.5b"):
        response = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Hello!"}],
        )
        assert response.choices[0].message.content
        assert response.model == model


RAY_CONFIG_YAML = """\
applications:
- args:
    llm_configs:
        - model_loading_config:
            model_id: qwen-0.5b
            model_source: Qwen/Qwen2.5-0.5B-Instruct
          accelerator_type: A10G
          deployment_config:
            autoscaling_config:
                min_replicas: 1
                max_replicas: 2
        - model_loading_config:
            model_id: qwen-1.5b
            model_source: Qwen/Qwen2.5-1.5B-Instruct
          accelerator_type: A10G
          deployment_config:
            autoscaling_config:
                min_replicas: 1
                max_replicas: 2
  import_path: ray.serve.llm:build_openai_app
  name: llm_app
  route_prefix: "/"
"""


def test_yaml_config_with_ray_import_path(tmp_path: Path) -> None:
    """`serve run config.yaml` is `llmserve run config.yaml`; the file keeps Ray's
    ``import_path: ray.serve.llm:build_openai_app``."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml_on_this_machine(RAY_CONFIG_YAML))
    assert "import_path: ray.serve.llm:build_openai_app" in config.read_text()
    port = free_port()
    with (tmp_path / "run.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "llmserve.cli", "run", str(config),
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health", 120, proc)
        client = OpenAI(base_url=f"{url}/v1", api_key="fake-key")
        assert sorted(m.id for m in client.models.list()) == ["qwen-0.5b", "qwen-1.5b"]
        assert stream_text(client, "qwen-1.5b")
    finally:
        stop(proc)
    assert "application 'llm_app' is ready" in (tmp_path / "run.log").read_text()


def test_multi_lora() -> None:
    from llmserve import serve  # was: from ray import serve
    from llmserve.llm import LLMConfig, build_openai_app  # was: from ray.serve.llm import ...

    llm_config = LLMConfig(
        model_loading_config=dict(model_id="qwen-0.5b",
                                  model_source="Qwen/Qwen2.5-0.5B-Instruct"),
        lora_config=dict(dynamic_lora_loading_path="s3://my_bucket/my_lora_folder",
                         max_num_adapters_per_replica=16),
        engine_kwargs=dict(max_model_len=8192),
        deployment_config=dict(autoscaling_config=dict(min_replicas=1, max_replicas=2)),
    )
    app = build_openai_app({"llm_configs": [on_this_machine(llm_config)]})
    serve.run(app, port=free_port())  # was: serve.run(app, blocking=True)

    client = OpenAI(base_url=f"{serve.http_url()}/v1", api_key="fake-key")
    assert stream_text(client, "qwen-0.5b:lora-1")  # an adapter of the folder
    assert stream_text(client, "qwen-0.5b")
