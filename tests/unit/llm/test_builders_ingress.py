"""`build_openai_app` asks for its ingress to run in the HTTP proxy's process on Ray."""

from __future__ import annotations

from typing import Any

import pytest

from llmserve.llm import build_openai_app

CONFIG = {"model_loading_config": {"model_id": "m", "model_source": "/nowhere"},
          "llm_engine": "sim"}


def _ingress_actor_options(**args: Any) -> dict[str, Any]:
    app = build_openai_app({"llm_configs": [CONFIG], **args})
    assert app.deployment.name == "OpenAiIngress"
    return dict(app.deployment.config.ray_actor_options or {})


def test_the_ingress_runs_in_the_proxy_by_default() -> None:
    assert _ingress_actor_options() == {"in_proxy": True}


def test_ingress_actor_options_keep_in_proxy_unless_they_set_it() -> None:
    options = {"ray_actor_options": {"num_cpus": 0.5}}
    assert _ingress_actor_options(ingress_deployment_config=options) == {
        "in_proxy": True, "num_cpus": 0.5}
    options = {"ray_actor_options": {"num_cpus": 0.5, "in_proxy": False},
               "max_ongoing_requests": 7}
    assert _ingress_actor_options(ingress_deployment_config=options) == {
        "in_proxy": False, "num_cpus": 0.5}


@pytest.mark.parametrize(("given", "engine"), [("vLLM", "vllm"), ("SGLang", "sglang"),
                                               ("vllm", "vllm")])
def test_llm_engine_accepts_ray_serve_llm_enum_values(given: str, engine: str) -> None:
    from llmserve.llm import LLMConfig

    config = LLMConfig.model_validate({"model_loading_config": {"model_id": "m"},
                                       "llm_engine": given})
    assert config.llm_engine == engine


def test_llm_engine_rejects_unknown_engines() -> None:
    from pydantic import ValidationError

    from llmserve.llm import LLMConfig

    with pytest.raises(ValidationError, match="llm_engine"):
        LLMConfig.model_validate({"model_loading_config": {"model_id": "m"},
                                  "llm_engine": "TensorRT"})
