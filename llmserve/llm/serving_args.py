"""``LLMServingArgs``: Ray Serve LLM's typed form of ``build_openai_app``'s arguments."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmserve.llm.config import LLMConfig


class LLMServingArgs(BaseModel):
    """``build_openai_app(LLMServingArgs(llm_configs=[...]))`` as in Ray Serve LLM; the
    same as passing ``{"llm_configs": [...]}``. Other fields are refused by name."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    llm_configs: list[LLMConfig | dict[str, Any] | str]
    ingress_deployment_config: dict[str, Any] = Field(default_factory=dict)

    def to_args(self) -> dict[str, Any]:
        return {"llm_configs": list(self.llm_configs),
                "ingress_deployment_config": dict(self.ingress_deployment_config)}
