"""Helpers for tests that run real engines: a cached tiny model and vLLM CPU settings.

Plain functions (import them from a test module or a conftest); the tiny model is
built once per parameter set under ``$LLMSERVE_CACHE_DIR`` (default
``~/.cache/llmserve``) and reused by every later test run.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from llmserve.llm.tiny_model import FORMAT_VERSION, build_tiny_model

# Settings that let vLLM's CPU backend start the tiny model quickly.
TINY_VLLM_KWARGS: dict[str, Any] = {
    "enforce_eager": True,
    "max_model_len": 1024,
    "block_size": 32,
    "max_lora_rank": 8,
}


def cache_root() -> Path:
    return Path(os.environ.get("LLMSERVE_CACHE_DIR", "~/.cache/llmserve")).expanduser()


def cached_tiny_model(*, seed: int = 0, num_loras: int = 0) -> Path:
    """The tiny model for these parameters, built on first use."""
    out_dir = cache_root() / f"tiny-model-s{seed}-l{num_loras}-v{FORMAT_VERSION}"
    return build_tiny_model(out_dir, seed=seed, num_loras=num_loras)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_cpu_env(kv_cache_gib: int = 1) -> dict[str, str]:
    """Environment for a vLLM CPU engine (an already-set ``VLLM_CPU_KVCACHE_SPACE`` wins)."""
    return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))}
