"""SGLang's OpenAI server as an engine.

Untested here: SGLang cannot run on this project's CPU-only CI machine, so the
command line, metric names and LoRA endpoints follow SGLang's documentation
(``python -m sglang.launch_server``; ``--enable-metrics`` exports
``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage`` and
``sglang:cache_hit_rate``; ``/load_lora_adapter`` and ``/unload_lora_adapter``)
and are covered by unit tests only. Nothing here imports sglang: the server runs
as a subprocess, usually from its own environment (``EngineSpec.python_executable``).
"""

from __future__ import annotations

import os
from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families

from engines.protocol import (
    EngineSpec,
    EngineStats,
    flag_names,
    post_adapter_request,
    render_flags,
)
from engines.sglang.secret_config import write_secret_config

RUNNING = "sglang:num_running_reqs"
WAITING = "sglang:num_queue_reqs"
TOKEN_USAGE = "sglang:token_usage"
CACHE_HIT_RATE = "sglang:cache_hit_rate"
# Flags the engine derives from ``EngineSpec``; in ``engine_kwargs`` they would clash.
RESERVED_FLAGS = frozenset({"model-path", "served-model-name", "host", "port", "tokenizer-path"})


class SglangEngine:
    """``python -m sglang.launch_server`` with the spec's flags (and metrics on)."""

    name = "sglang"
    health_path = "/health"
    metrics_path = "/metrics"

    def command(self, spec: EngineSpec) -> list[str]:
        argv = [spec.python_executable, "-m", "sglang.launch_server"]
        argv += ["--model-path", spec.model_source, "--served-model-name", spec.model_name]
        argv += ["--host", spec.host, "--port", str(spec.port)]
        if spec.tokenizer_source:
            argv += ["--tokenizer-path", spec.tokenizer_source]
        flags = flag_names(spec.engine_kwargs)
        clashes = sorted(flags & RESERVED_FLAGS)
        if clashes:
            raise ValueError(
                f"engine_kwargs must not set {clashes}: they come from the model config"
            )
        if "enable-metrics" not in flags:
            argv.append("--enable-metrics")
        if spec.lora_modules:
            argv += ["--enable-lora"] if "enable-lora" not in flags else []
            argv += ["--lora-paths", *(f"{n}={p}" for n, p in spec.lora_modules.items())]
        kwargs = dict(spec.engine_kwargs)
        if spec.api_key:  # in a file SGLang reads, not on the command line (`ps`)
            user_config = kwargs.pop("config", None)
            argv += ["--config", str(write_secret_config(spec.api_key, user_config))]
        # SGLang's boolean flags are plain store_true: False means "leave it out".
        return argv + render_flags(kwargs, negate_false=False)

    def env(self, spec: EngineSpec) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}

    def parse_stats(self, metrics_text: str) -> EngineStats:
        """Sum over ranks; average the usage and hit-rate gauges."""
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for family in text_string_to_metric_families(metrics_text):
            for sample in family.samples:
                if sample.name in (RUNNING, WAITING, TOKEN_USAGE, CACHE_HIT_RATE):
                    sums[sample.name] += sample.value
                    counts[sample.name] += 1

        def mean(name: str) -> float:
            return sums[name] / counts[name] if counts[name] else 0.0

        return EngineStats(
            num_running=int(sums[RUNNING]),
            num_waiting=int(sums[WAITING]),
            kv_cache_usage=mean(TOKEN_USAGE),
            reported_hit_rate=mean(CACHE_HIT_RATE) if counts[CACHE_HIT_RATE] else None,
        )

    async def load_lora(
        self, client: httpx.AsyncClient, base_url: str, name: str, path: str
    ) -> None:
        payload = {"lora_name": name, "lora_path": path}
        await post_adapter_request(client, f"{base_url}/load_lora_adapter", payload)

    async def unload_lora(self, client: httpx.AsyncClient, base_url: str, name: str) -> None:
        await post_adapter_request(client, f"{base_url}/unload_lora_adapter", {"lora_name": name})
