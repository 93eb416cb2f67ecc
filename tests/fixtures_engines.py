"""Helpers for tests that run engines: a cached tiny model, vLLM CPU settings and a
simulated model's config.

Plain functions (import them from a test module or a conftest).
:func:`cached_tiny_model` builds the tiny model once per parameter set under
``$LLMSERVE_CACHE_DIR`` (default ``~/.cache/llmserve``) and reuses it afterwards.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from llmserve.llm.config import LLMConfig
from llmserve.llm.tiny_model import cached_tiny_model

# Settings that let vLLM's CPU backend start the tiny model quickly.
TINY_VLLM_KWARGS: dict[str, Any] = {
    "enforce_eager": True,
    "max_model_len": 1024,
    "block_size": 32,
    "max_lora_rank": 8,
}


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_cpu_env(kv_cache_gib: int = 1) -> dict[str, str]:
    """Environment for a vLLM CPU engine (an already-set ``VLLM_CPU_KVCACHE_SPACE`` wins)."""
    return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))}


def sim_config(model_dir: str, **changes: object) -> LLMConfig:
    base: dict[str, object] = {
        "model_loading_config": {"model_id": "sim", "model_source": model_dir},
        "llm_engine": "sim",
    }
    return LLMConfig.model_validate(base | changes)


__all__ = ["TINY_VLLM_KWARGS", "cached_tiny_model", "sim_config", "vllm_cpu_env",
           "vllm_installed"]
