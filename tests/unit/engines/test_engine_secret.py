"""How each engine is given its secret: by environment or an owner-only file, never argv."""

from __future__ import annotations

import stat
from pathlib import Path

import yaml

from engines.protocol import EngineSpec
from engines.sglang.engine import SglangEngine
from engines.vllm.engine import SimEngine, VllmEngine

SECRET = "sk-engine-0123456789"


def spec(**changes: object) -> EngineSpec:
    fields: dict[str, object] = {"model_source": "/m", "served_model_name": "m",
                                 "port": 9000, "api_key": SECRET}
    return EngineSpec(**(fields | changes))  # type: ignore[arg-type]


def test_vllm_and_sim_get_it_in_their_environment_only() -> None:
    for engine in (VllmEngine(), SimEngine()):
        argv = engine.command(spec())
        assert not any(SECRET in arg for arg in argv)
        assert engine.env(spec())["VLLM_API_KEY"] == SECRET
    assert VllmEngine().env(spec(api_key=None)).get("VLLM_API_KEY") != SECRET


def test_the_spec_repr_hides_it() -> None:
    assert SECRET not in repr(spec())


def config_file(argv: list[str]) -> Path:
    return Path(argv[argv.index("--config") + 1])


def test_sglang_reads_it_from_an_owner_only_config_file() -> None:
    engine = SglangEngine()
    argv = engine.command(spec())
    assert not any(SECRET in arg for arg in argv)
    path = config_file(argv)
    assert path.suffix == ".yaml"  # SGLang's --config takes YAML only
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert yaml.safe_load(path.read_text()) == {"api-key": SECRET}
    assert SECRET not in engine.env(spec()).values()


def test_sglang_merges_the_users_own_config_file(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"
    own.write_text("mem-fraction-static: 0.7\nlog-level: debug\n")
    argv = SglangEngine().command(spec(engine_kwargs={"config": str(own),
                                                      "context_length": 512}))
    assert argv.count("--config") == 1
    assert yaml.safe_load(config_file(argv).read_text()) == {
        "mem-fraction-static": 0.7, "log-level": "debug", "api-key": SECRET}
    assert argv[-2:] == ["--context-length", "512"]


def test_sglang_without_a_key_has_no_config_file() -> None:
    assert "--config" not in SglangEngine().command(spec(api_key=None))
