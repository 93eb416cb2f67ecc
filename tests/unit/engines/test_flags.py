from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from engines.protocol import Engine, EngineSpec, render_flags
from engines.registry import available_engines, make_engine, register_engine
from engines.sglang.engine import SglangEngine
from engines.vllm.engine import SimEngine, VllmEngine


@pytest.mark.parametrize(
    ("kwargs", "argv"),
    [
        ({"max_model_len": 1024}, ["--max-model-len", "1024"]),
        ({"max-num-seqs": 8}, ["--max-num-seqs", "8"]),
        ({"enforce_eager": True}, ["--enforce-eager"]),
        ({"enable_prefix_caching": False}, ["--no-enable-prefix-caching"]),
        ({"dtype": None}, []),
        ({"gpu_memory_utilization": 0.5}, ["--gpu-memory-utilization", "0.5"]),
        ({"api_key": ["a", "b"]}, ["--api-key", "a", "b"]),
        ({"api_key": []}, []),
        (
            {"compilation_config": {"mode": 0, "x": [1]}},
            ["--compilation-config", '{"mode":0,"x":[1]}'],
        ),
    ],
)
def test_render_flags(kwargs: dict[str, Any], argv: list[str]) -> None:
    assert render_flags(kwargs) == argv


def test_render_flags_store_true_only_and_repeated() -> None:
    kwargs = {"disable_log_stats": False, "middleware": ["m.a", "m.b"], "trust_remote_code": False}
    argv = render_flags(kwargs, store_true_only={"disable-log-stats"}, repeated={"middleware"})
    assert argv == ["--middleware", "m.a", "--middleware", "m.b", "--no-trust-remote-code"]


def test_render_flags_without_negation_omits_false() -> None:
    assert render_flags(
        {"enable_metrics": True, "disable_radix_cache": False}, negate_false=False
    ) == ["--enable-metrics"]


def spec(**overrides: Any) -> EngineSpec:
    fields: dict[str, Any] = {
        "model_source": "/models/tiny",
        "served_model_name": "tiny",
        "port": 8123,
        "python_executable": "/envs/vllm/bin/python",
    }
    return EngineSpec(**{**fields, **overrides})


def test_vllm_command() -> None:
    command = VllmEngine().command(
        spec(engine_kwargs={"max_model_len": 1024, "enforce_eager": True}, tokenizer_source="/tok")
    )
    assert command == [
        "/envs/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/models/tiny", "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", "8123", "--tokenizer", "/tok",
        "--max-model-len", "1024", "--enforce-eager",
    ]  # fmt: skip


def test_vllm_command_with_lora_modules_enables_lora_and_runtime_updates() -> None:
    engine = VllmEngine()
    the_spec = spec(lora_modules={"a": "/l/a", "b": "/l/b"}, engine_kwargs={"max_lora_rank": 8})
    command = engine.command(the_spec)
    start = command.index("--lora-modules")
    assert command[start : start + 3] == ["--lora-modules", "a=/l/a", "b=/l/b"]
    assert command.count("--enable-lora") == 1
    assert engine.env(the_spec)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    explicit = spec(lora_modules={"a": "/l/a"}, engine_kwargs={"enable_lora": True})
    assert engine.command(explicit).count("--enable-lora") == 1


def test_vllm_env_merges_spec_env_over_ours() -> None:
    env = VllmEngine().env(spec(env={"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "0"}))
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "0"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env
    assert "PATH" in env


def test_reserved_flags_in_engine_kwargs_are_refused() -> None:
    with pytest.raises(ValueError, match="port"):
        VllmEngine().command(spec(engine_kwargs={"port": 1}))
    with pytest.raises(ValueError, match="model-path"):
        SglangEngine().command(spec(engine_kwargs={"model_path": "/x"}))


def test_sim_command_runs_the_simulator_module() -> None:
    command = SimEngine().command(spec(engine_kwargs={"profile": "fast"}))
    assert command[:3] == ["/envs/vllm/bin/python", "-m", "engines.sim"]
    assert command[-2:] == ["--profile", "fast"]
    assert "--model" in command and "--port" in command


def test_sglang_command() -> None:
    command = SglangEngine().command(
        spec(lora_modules={"a": "/l/a"}, engine_kwargs={"mem_fraction_static": 0.8, "x": False})
    )
    assert command == [
        "/envs/vllm/bin/python", "-m", "sglang.launch_server",
        "--model-path", "/models/tiny", "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", "8123", "--enable-metrics",
        "--enable-lora", "--lora-paths", "a=/l/a", "--mem-fraction-static", "0.8",
    ]  # fmt: skip


def test_spec_defaults() -> None:
    the_spec = EngineSpec(model_source="/m", host="0.0.0.0", port=9000)
    assert the_spec.python_executable == sys.executable
    assert the_spec.model_name == "/m"
    assert the_spec.base_url == "http://127.0.0.1:9000"
    assert EngineSpec(model_source="/m", host="::1", port=1).base_url == "http://[::1]:1"


def test_registry_is_lazy_and_extensible() -> None:
    assert {"vllm", "sglang", "sim"} <= set(available_engines())
    engines = [make_engine(name) for name in ("vllm", "sglang", "sim")]
    assert [engine.name for engine in engines] == ["vllm", "sglang", "sim"]
    assert all(isinstance(engine, Engine) for engine in engines)
    register_engine("custom", "engines.vllm.engine:VllmEngine")
    assert make_engine("custom").name == "vllm"
    assert make_engine("engines.sglang.engine:SglangEngine").name == "sglang"
    with pytest.raises(ValueError, match="unknown engine 'nope'; known: "):
        make_engine("nope")


def test_spec_kwargs_dict_value_is_json() -> None:
    command = VllmEngine().command(spec(engine_kwargs={"hf_overrides": {"a": 1}}))
    assert json.loads(command[command.index("--hf-overrides") + 1]) == {"a": 1}


def test_enforce_eager_is_a_default_only_for_the_cpu_build() -> None:
    from importlib import metadata

    from engines.vllm.engine import cpu_build_installed, default_cli_kwargs

    try:
        metadata.distribution("vllm-cpu")
        cpu = True
    except metadata.PackageNotFoundError:
        cpu = False
    assert cpu_build_installed() is cpu
    assert default_cli_kwargs() == ({"enforce_eager": True} if cpu else {})
