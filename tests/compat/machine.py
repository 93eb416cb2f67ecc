"""What this test machine changes in Ray Serve LLM's documented examples, and nothing else.

- No model hub: every ``model_source`` becomes the local tiny model
  (``tests.fixtures_engines.cached_tiny_model``), and a ``s3://`` LoRA folder the tiny
  model's own adapter folder.
- No GPU: GPU-only ``engine_kwargs`` (``tensor_parallel_size``, ``pipeline_parallel_size``)
  are dropped; ``accelerator_type`` stays (the local runtime records it, reserves nothing).
- Speed: ``llm_engine`` becomes ``sim`` (the in-tree simulator, which speaks vLLM's HTTP API)
  except in the example that runs on real vLLM CPU, which gets the CPU settings of
  ``TINY_VLLM_KWARGS`` and ``VLLM_CPU_KVCACHE_SPACE``.
- ``serve.run(app, blocking=True)`` is called without ``blocking`` (the test is the client).
"""

from __future__ import annotations

from typing import Any

from llmserve.llm import LLMConfig
from tests.fixtures_engines import TINY_VLLM_KWARGS, cached_tiny_model, vllm_cpu_env

GPU_ONLY_ENGINE_KWARGS = frozenset({"tensor_parallel_size", "pipeline_parallel_size"})


def on_this_machine(config: LLMConfig, engine: str = "sim") -> LLMConfig:
    """``config`` with the changes listed in this module's docstring."""
    data: dict[str, Any] = config.model_dump(exclude_unset=True)
    num_loras = 2 if data.get("lora_config") else 0
    model_dir = cached_tiny_model(num_loras=num_loras)
    data["model_loading_config"] = {**data["model_loading_config"],
                                    "model_source": str(model_dir)}
    kwargs = {k: v for k, v in (data.get("engine_kwargs") or {}).items()
              if k not in GPU_ONLY_ENGINE_KWARGS}
    if engine == "vllm":
        kwargs = {**TINY_VLLM_KWARGS, **kwargs, "max_model_len": 1024}
        env = dict((data.get("runtime_env") or {}).get("env_vars") or {})
        data["runtime_env"] = {"env_vars": {**env, **vllm_cpu_env()}}
    data["engine_kwargs"] = kwargs
    data["llm_engine"] = engine
    if data.get("lora_config", {}).get("dynamic_lora_loading_path"):
        data["lora_config"] = {**data["lora_config"],
                               "dynamic_lora_loading_path": str(model_dir / "loras")}
    return LLMConfig.model_validate(data)


def yaml_on_this_machine(text: str) -> str:
    """A Ray Serve config file's text with the same changes, line by line."""
    model_dir = cached_tiny_model()
    lines = []
    for line in text.splitlines():
        key = line.strip().removeprefix("- ").split(":", 1)[0]
        if key == "model_source":
            line = line.split(":", 1)[0] + f": {model_dir}"
        elif key == "model_loading_config":  # each model: the simulator
            prefix = line.split("model_loading_config")[0]  # e.g. "    - "
            lines.append(f"{prefix}llm_engine: sim")
            line = prefix.replace("-", " ") + "model_loading_config:"
        lines.append(line)
    return "\n".join(lines) + "\n"
