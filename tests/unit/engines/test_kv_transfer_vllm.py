"""llmserve's settings for vLLM engines with the NIXL connector (no vLLM started)."""

from __future__ import annotations

import os

import pytest

from engines.protocol import EngineSpec
from engines.vllm.engine import SimEngine, VllmEngine
from engines.vllm.kv_transfer import (
    cpu_threads_env,
    default_kv_transfer_config,
    installed_vllm_is_cpu,
    side_channel_env,
)

NIXL = {"kv_transfer_config": default_kv_transfer_config("prefill", "cpu")}
cpu_build = pytest.mark.skipif(not installed_vllm_is_cpu(), reason="needs vLLM's CPU build")


def test_roles_follow_the_pool() -> None:
    assert default_kv_transfer_config("prefill")["kv_role"] == "kv_producer"
    assert default_kv_transfer_config("decode")["kv_role"] == "kv_consumer"
    with pytest.raises(ValueError, match="role"):
        default_kv_transfer_config("both")


@cpu_build
@pytest.mark.parametrize(("cores", "threads"), [(1, "1"), (2, "1"), (4, "1"), (8, "3"),
                                                (64, "31")])
def test_nixl_engines_on_cpu_get_unbound_openmp_threads(cores: int, threads: str) -> None:
    assert cpu_threads_env(NIXL, {}, cores) == {"VLLM_CPU_OMP_THREADS_BIND": "nobind",
                                                "OMP_NUM_THREADS": threads}


@cpu_build
def test_what_the_user_sets_wins_and_other_engines_are_left_alone() -> None:
    assert cpu_threads_env(NIXL, {"OMP_NUM_THREADS": "4"}, 2) == {}
    assert cpu_threads_env(NIXL, {"VLLM_CPU_OMP_THREADS_BIND": "0-1"}, 2) == {}
    assert cpu_threads_env({}, {}, 2) == {}
    spec = EngineSpec("m", engine_kwargs=NIXL, env={"OMP_NUM_THREADS": "3"})
    env = VllmEngine().env(spec)
    assert env["OMP_NUM_THREADS"] == "3"
    assert env.get("VLLM_CPU_OMP_THREADS_BIND") == os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    assert "VLLM_NIXL_SIDE_CHANNEL_PORT" in env


def test_the_simulator_gets_no_nixl_settings() -> None:
    env = SimEngine().env(EngineSpec("m", engine_kwargs=NIXL))
    assert "VLLM_NIXL_SIDE_CHANNEL_PORT" not in env
    assert side_channel_env(NIXL, "127.0.0.1", {})  # a vLLM engine would get one
