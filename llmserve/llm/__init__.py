"""The LLM layer (mirrors ``ray.serve.llm``): ``LLMConfig``, ``build_openai_app``, ``LLMServer``."""

from __future__ import annotations

from llmserve.llm.builders import build_llm_deployment, build_openai_app
from llmserve.llm.config import LLMConfig, LoraConfig, ModelLoadingConfig
from llmserve.llm.pd import build_pd_openai_app
from llmserve.llm.server import LLMServer
from llmserve.llm.serving_args import LLMServingArgs

__all__ = [
    "LLMConfig",
    "LLMServer",
    "LLMServingArgs",
    "LoraConfig",
    "ModelLoadingConfig",
    "build_llm_deployment",
    "build_openai_app",
    "build_pd_openai_app",
]
