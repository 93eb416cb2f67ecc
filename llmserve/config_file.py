"""Ray Serve's config-file schema (``serve deploy`` / ``serve run config.yaml``)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from llmserve.serve.deployment import Application, Deployment, replace_applications
from llmserve.serve.exceptions import ConfigError


class HttpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = 8000
    request_timeout_s: float | None = None


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


class ServeConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # where the Ray runtime runs HTTP proxies (Ray Serve's default); ignored on local
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = "EveryNode"
    http_options: HttpOptions = Field(default_factory=HttpOptions)
    grpc_options: dict[str, Any] = Field(default_factory=dict)
    logging_config: dict[str, Any] = Field(default_factory=dict)
    applications: list[ApplicationConfig]


def load_config_file(path: str | Path) -> ServeConfigFile:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with an 'applications' list")
    return ServeConfigFile.model_validate(raw)


def import_attr(import_path: str) -> Any:
    module_name, sep, attr = import_path.partition(":")
    if not sep:
        module_name, _, attr = import_path.rpartition(".")
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
