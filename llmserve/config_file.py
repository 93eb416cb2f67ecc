"""Ray Serve's config-file schema (``serve deploy`` / ``serve run config.yaml``)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from llmserve.log_setup import configure_logging, current_level
from llmserve.serve.deployment import Application, Deployment, replace_applications
from llmserve.serve.exceptions import ConfigError


def _refuse(value: Any, key: str, why: str) -> None:
    """Accepting a key and then ignoring it would mislead: a set value is an error."""
    if value:
        raise ValueError(f"{key} is not supported: {why}")


class HttpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = 8000
    request_timeout_s: float | None = None

    @field_validator("request_timeout_s")
    @classmethod
    def _no_proxy_timeout(cls, value: float | None) -> float | None:
        _refuse(value, "http_options.request_timeout_s",
                "set request_timeout_s in the LLM application's args (the time an engine "
                "may stay silent) instead")
        return value


class LoggingConfig(BaseModel):
    """Ray Serve's ``logging_config``: only ``log_level`` has a meaning here."""

    model_config = ConfigDict(extra="forbid")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = None
    encoding: str | None = None
    logs_dir: str | None = None
    enable_access_log: bool | None = None

    @field_validator("logs_dir")
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        _refuse(value is not None, f"logging_config.{info.field_name}",
                "logs go to the standard error stream")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in ("TEXT", "JSON"):
            raise ValueError(f"logging_config.encoding must be TEXT or JSON, got {value!r}")
        return value


class DeploymentOverride(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class ApplicationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "default"
    route_prefix: str | None = "/"
    import_path: str
    args: dict[str, Any] = Field(default_factory=dict)
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    deployments: list[DeploymentOverride] = Field(default_factory=list)
    external_scaler_enabled: bool = False

    @field_validator("runtime_env")
    @classmethod
    def _no_app_runtime_env(cls, value: dict[str, Any]) -> dict[str, Any]:
        _refuse(value, "an application's runtime_env", "set runtime_env per deployment "
                "(ray_actor_options) or per model (LLMConfig.runtime_env)")
        return value

    @field_validator("external_scaler_enabled")
    @classmethod
    def _no_external_scaler(cls, value: bool) -> bool:
        _refuse(value, "external_scaler_enabled",
                "replicas are scaled by each deployment's autoscaling_config")
        return value


class ServeConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # where the Ray runtime runs HTTP proxies (Ray Serve's default); ignored on local
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = "EveryNode"
    http_options: HttpOptions = Field(default_factory=HttpOptions)
    grpc_options: dict[str, Any] = Field(default_factory=dict)
    logging_config: LoggingConfig = Field(default_factory=LoggingConfig)
    applications: list[ApplicationConfig]

    @field_validator("grpc_options")
    @classmethod
    def _no_grpc(cls, value: dict[str, Any]) -> dict[str, Any]:
        _refuse(value, "grpc_options", "llmserve serves HTTP only")
        return value


def load_config_file(path: str | Path) -> ServeConfigFile:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with an 'applications' list")
    return ServeConfigFile.model_validate(raw)


def apply_logging_config(config: ServeConfigFile) -> None:
    """``log_level``, ``encoding`` (TEXT or JSON lines, as ``--log-format``) and
    ``enable_access_log`` (the ``llmserve.access`` lines, on by default)."""
    settings = config.logging_config
    if settings.log_level is not None:
        logging.getLogger("llmserve").setLevel(settings.log_level)
    if settings.encoding is not None:
        configure_logging(current_level(), settings.encoding.lower())
    if settings.enable_access_log is not None:
        logging.getLogger("llmserve.access").setLevel(
            logging.NOTSET if settings.enable_access_log else logging.WARNING)


# Ray Serve configs name Ray's builders; here they mean llmserve's namesakes, so a Ray
# Serve LLM config file runs unchanged (`import_path: ray.serve.llm:build_openai_app`).
RAY_MODULES = {"ray.serve.llm": "llmserve.llm", "ray.serve": "llmserve.serve"}


def import_attr(import_path: str) -> Any:
    module_name, sep, attr = import_path.partition(":")
    if not sep:
        module_name, _, attr = import_path.rpartition(".")
    module_name = RAY_MODULES.get(module_name, module_name)
    if not module_name or not attr:
        raise ConfigError(f"import_path {import_path!r} must look like 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} from {import_path!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None


def build_application(config: ApplicationConfig) -> Application:
    """Import the target, call it with ``args`` when it is a builder, apply overrides."""
    target = import_attr(config.import_path)
    if isinstance(target, Deployment):
        target = target.bind()
    if not isinstance(target, Application):
        if not callable(target):
            raise ConfigError(f"{config.import_path} is not an application or a builder")
        target = target(config.args)
    elif config.args:
        raise ConfigError(f"{config.import_path} is a bound application: it takes no args")
    if not isinstance(target, Application):
        raise ConfigError(f"the builder {config.import_path} did not return an application")
    overrides = {d.name: d.model_dump(exclude={"name"}) for d in config.deployments}
    return _apply_overrides(target, overrides) if overrides else target


def _apply_overrides(app: Application, overrides: dict[str, dict[str, Any]]) -> Application:
    unknown = set(overrides) - {node.deployment.name for node in app.walk()}
    if unknown:
        raise ConfigError(f"config overrides unknown deployments: {sorted(unknown)}")

    def rebuild(node: Application) -> Application:
        dep = node.deployment
        if dep.name in overrides:
            dep = dep.options(**overrides[dep.name])
        args = replace_applications(node.args, rebuild)
        kwargs = replace_applications(node.kwargs, rebuild)
        return Application(dep, args, kwargs)

    return rebuild(app)
