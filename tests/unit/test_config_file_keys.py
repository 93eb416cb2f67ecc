"""Config keys the gateway cannot honour are refused, naming the key; none is ignored."""

from __future__ import annotations

import json
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
    ({"logging_config": {"encoding": "XML"}}, "logging_config.encoding"),
    ({"logging_config": {"logs_dir": "/tmp/x"}}, "logging_config.logs_dir"),
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


def test_log_engine_metrics_reaches_the_gateway() -> None:
    """Off: the model's engines are not listed at /metrics/engines (docs/metrics.md)."""
    from llmserve.llm import build_openai_app

    configs = [LLMConfig.model_validate({"model_loading_config": {"model_id": m},
                                         "llm_engine": "sim", "log_engine_metrics": on})
               for m, on in (("quiet", False), ("loud", True))]
    app = build_openai_app({"llm_configs": configs})
    sources = {s.model_id: s.log_engine_metrics for s in app.args[0]}
    assert sources == {"quiet": False, "loud": True}


def test_logging_config_encoding_and_access_log_are_applied(tmp_path: Path) -> None:
    """In a fresh process: it replaces the process's log handlers."""
    path = write(tmp_path, {"logging_config": {"encoding": "JSON", "enable_access_log": False}})
    script = (
        "import json, logging, sys\n"
        "from llmserve.config_file import apply_logging_config, load_config_file\n"
        f"apply_logging_config(load_config_file({str(path)!r}))\n"
        "logging.getLogger('llmserve.access').info('hidden')\n"
        "logging.getLogger('llmserve.x').warning('shown', extra={'k': 1})\n"
        "logging.shutdown()\n")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=60)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(r["logger"], r["message"], r["k"]) for r in lines] == [("llmserve.x", "shown", 1)]
