"""Config keys the gateway cannot honour are refused, naming the key; none is ignored."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from llmserve.config_file import apply_logging_config, load_config_file
from llmserve.llm import LLMConfig
from llmserve.serve.exceptions import ConfigError

APP = {"name": "a", "import_path": "x:y"}


def write(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"applications": [APP], **data}))
    return path


@pytest.mark.parametrize(("data", "key"), [
    ({"http_options": {"request_timeout_s": 5}}, "http_options.request_timeout_s"),
    ({"grpc_options": {"port": 9000}}, "grpc_options"),
    ({"logging_config": {"encoding": "JSON"}}, "logging_config.encoding"),
    ({"applications": [{**APP, "runtime_env": {"pip": ["x"]}}]}, "runtime_env"),
    ({"applications": [{**APP, "external_scaler_enabled": True}]},
     "external_scaler_enabled"),
])
def test_unsupported_keys_are_refused_by_name(tmp_path: Path, data: dict[str, object],
                                              key: str) -> None:
    with pytest.raises((ConfigError, ValidationError), match=key.split(".")[-1]):
        load_config_file(write(tmp_path, data))


def test_logging_config_log_level_is_applied(tmp_path: Path) -> None:
    config = load_config_file(write(tmp_path, {"logging_config": {"log_level": "DEBUG"}}))
    before = logging.getLogger("llmserve").level
    try:
        apply_logging_config(config)
        assert logging.getLogger("llmserve").level == logging.DEBUG
    finally:
        logging.getLogger("llmserve").setLevel(before)


def test_log_engine_metrics_off_is_refused() -> None:
    with pytest.raises(ValidationError, match="log_engine_metrics"):
        LLMConfig.model_validate({"model_loading_config": {"model_id": "m"},
                                  "log_engine_metrics": False})
