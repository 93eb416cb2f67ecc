"""`LLMConfig`: one model, its engine and how it is deployed (pydantic, strict keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmserve.serve.config import DeploymentConfig
from llmserve.serve.exceptions import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelLoadingConfig(_Strict):
    model_id: str = Field(min_length=1)
    model_source: str | None = None
    tokenizer_source: str | None = None

    @property
    def source(self) -> str:
        return self.model_source or self.model_id


class LoraConfig(_Strict):
    """Ray Serve LLM's ``lora_config``; ``lora_modules`` (``{name: local path}``, vLLM's
    ``--lora-modules``) is llmserve's addition. See docs/lora.md."""

    dynamic_lora_loading_path: str | None = None
    max_num_adapters_per_replica: int = Field(default=16, ge=1)
    download_timeout_s: float = Field(default=30.0, gt=0)
    max_download_tries: int = Field(default=3, ge=1)
    lora_modules: dict[str, str] = Field(default_factory=dict)

    @field_validator("dynamic_lora_loading_path")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        from llmserve.lora.folder import check_folder_uri

        return None if value is None else check_folder_uri(value)

    @field_validator("lora_modules")
    @classmethod
    def _plain_names(cls, value: dict[str, str]) -> dict[str, str]:
        from llmserve.lora.names import check_adapter_name

        for name in value:
            try:
                check_adapter_name(name)
            except Exception as exc:
                raise ValueError(f"lora_modules: {exc}") from None
        return value


class RuntimeEnv(_Strict):
    """Environment of the engine process. ``python`` runs it from another environment."""

    env_vars: dict[str, str] = Field(default_factory=dict)
    python: str | None = None


class LLMConfig(_Strict):
    model_loading_config: ModelLoadingConfig
    llm_engine: Literal["vllm", "sglang", "sim"] = "vllm"
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    deployment_config: dict[str, Any] = Field(default_factory=dict)
    accelerator_type: str | None = None
    placement_group_config: dict[str, Any] | None = None
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv)
    lora_config: LoraConfig | None = None
    routing_config: dict[str, Any] = Field(default_factory=lambda: {"policy": "prefix_aware"})
    log_engine_metrics: bool = True
    engine_ready_timeout_s: float = Field(default=600.0, gt=0)

    @property
    def model_id(self) -> str:
        return self.model_loading_config.model_id

    def with_lora_enabled(self) -> LLMConfig:
        """With ``lora_config``: the engine's LoRA flags filled in (see llmserve.lora)."""
        if self.lora_config is None:
            return self
        from llmserve.lora.settings import lora_engine_kwargs

        kwargs = lora_engine_kwargs(self.lora_config, self.engine_kwargs)
        return self if kwargs == self.engine_kwargs else self.model_copy(
            update={"engine_kwargs": kwargs})

    @field_validator("log_engine_metrics")
    @classmethod
    def _engine_metrics_are_read(cls, value: bool) -> bool:
        if not value:
            raise ValueError("log_engine_metrics=False is not supported: the gateway always "
                             "reads each engine's metrics (routing needs them)")
        return value

    @field_validator("llm_engine", mode="before")
    @classmethod
    def _engine_name(cls, value: Any) -> Any:
        """Ray Serve LLM's enum values (``vLLM``, ``SGLang``) name the same engines."""
        return value.lower() if isinstance(value, str) else value

    @field_validator("deployment_config")
    @classmethod
    def _known_deployment_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            DeploymentConfig().updated(**value)
        except (ConfigError, TypeError) as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("routing_config")
    @classmethod
    def _routing_has_policy(cls, value: dict[str, Any]) -> dict[str, Any]:
        from routing import available_policies

        policy = value.get("policy", "prefix_aware")
        if policy not in available_policies() and ":" not in str(policy):
            raise ValueError(f"unknown routing policy {policy!r}; known: "
                             f"{', '.join(available_policies())}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _routing_knows_the_engine(cls, data: Any) -> Any:
        """Tell the router the engine's ``block_size`` (if its policy takes one; else the
        policy's default, vLLM's GPU default of 16) and where the tokenizer lives."""
        if not isinstance(data, dict):
            return data
        from routing.registry import policy_accepts

        routing = data.get("routing_config")
        routing = {"policy": "prefix_aware"} if routing is None else routing
        if not isinstance(routing, dict):
            return data
        routing = dict(routing)
        loading = data.get("model_loading_config")
        tokenizer = (loading.get("tokenizer_source") if isinstance(loading, dict)
                     else getattr(loading, "tokenizer_source", None))
        if tokenizer and "tokenizer_source" not in routing:
            routing["tokenizer_source"] = tokenizer
        engine_kwargs = data.get("engine_kwargs") or {}
        block_size = engine_kwargs.get("block_size", engine_kwargs.get("block-size"))
        policy = str(routing.get("policy", "prefix_aware"))
        if (block_size is not None and "block_size" not in routing
                and policy_accepts(policy, "block_size")):
            routing["block_size"] = int(block_size)
        return {**data, "routing_config": routing}

    @model_validator(mode="after")
    def _engine_kwargs_do_not_clash(self) -> LLMConfig:
        clashes = {"model", "served_model_name", "host", "port"} & {
            k.replace("-", "_") for k in self.engine_kwargs
        }
        if clashes:
            raise ValueError(
                f"engine_kwargs must not set {sorted(clashes)}: they come from "
                "model_loading_config and the replica"
            )
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> LLMConfig:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read LLM config {path}: {exc}") from exc
        return cls.model_validate(raw)

    @classmethod
    def coerce(cls, value: LLMConfig | dict[str, Any] | str | Path) -> LLMConfig:
        """An LLMConfig from itself, a mapping, or a path to a YAML file holding one."""
        if isinstance(value, LLMConfig):
            return value
        if isinstance(value, str | Path):
            return cls.from_file(value)
        return cls.model_validate(value)
