"""Deployment and autoscaling options as frozen dataclasses (validated on creation)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from llmserve.serve.exceptions import ConfigError


@dataclass(frozen=True)
class AutoscalingConfig:
    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    upscaling_factor: float = 1.0
    downscaling_factor: float = 1.0
    look_back_period_s: float = 30.0
    metrics_interval_s: float = 0.1
    policy: str | Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ConfigError("autoscaling_config.min_replicas must be >= 0")
        if self.max_replicas < max(1, self.min_replicas):
            raise ConfigError("autoscaling_config.max_replicas must be >= max(1, min_replicas)")
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ConfigError("autoscaling_config.initial_replicas must lie in [min, max]")
        if self.target_ongoing_requests <= 0:
            raise ConfigError("autoscaling_config.target_ongoing_requests must be > 0")
        if self.upscaling_factor <= 0 or self.downscaling_factor <= 0:
            raise ConfigError("autoscaling_config scaling factors must be > 0")
        if self.upscale_delay_s < 0 or self.downscale_delay_s < 0:
            raise ConfigError("autoscaling_config delays must be >= 0")

    @property
    def start_replicas(self) -> int:
        if self.initial_replicas is not None:
            return self.initial_replicas
        return self.min_replicas

    @classmethod
    def from_value(cls, value: AutoscalingConfig | Mapping[str, Any] | None) -> AutoscalingConfig:
        if value is None:
            return cls(min_replicas=1, max_replicas=100)
        if isinstance(value, AutoscalingConfig):
            return value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"unknown autoscaling_config keys: {unknown}")
        return cls(**dict(value))


@dataclass(frozen=True)
class DeploymentConfig:
    num_replicas: int | Literal["auto"] = 1
    max_ongoing_requests: int = 5
    max_queued_requests: int = -1
    autoscaling_config: AutoscalingConfig | None = None
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    graceful_shutdown_timeout_s: float = 20.0
    graceful_shutdown_wait_loop_s: float = 2.0
    ray_actor_options: Mapping[str, Any] | None = None
    user_config: Any = None
    request_router_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_replicas != "auto" and (
            not isinstance(self.num_replicas, int) or self.num_replicas < 0
        ):
            raise ConfigError("num_replicas must be a non-negative int or 'auto'")
        if self.max_ongoing_requests < 1:
            raise ConfigError("max_ongoing_requests must be >= 1")
        if self.max_queued_requests < -1:
            raise ConfigError("max_queued_requests must be -1 (unbounded) or >= 0")
        if self.health_check_period_s <= 0 or self.health_check_timeout_s <= 0:
            raise ConfigError("health check period and timeout must be > 0")
        if self.graceful_shutdown_timeout_s < 0:
            raise ConfigError("graceful_shutdown_timeout_s must be >= 0")

    @property
    def autoscaling(self) -> AutoscalingConfig | None:
        if self.autoscaling_config is not None:
            return self.autoscaling_config
        if self.num_replicas == "auto":
            return AutoscalingConfig.from_value(None)
        return None

    @property
    def fixed_replicas(self) -> int:
        scaling = self.autoscaling
        if scaling is not None:
            return scaling.start_replicas
        assert isinstance(self.num_replicas, int)
        return self.num_replicas

    def updated(self, **changes: Any) -> DeploymentConfig:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown deployment options: {unknown}")
        if "autoscaling_config" in changes and changes["autoscaling_config"] is not None:
            changes["autoscaling_config"] = AutoscalingConfig.from_value(
                changes["autoscaling_config"]
            )
        if "request_router_config" in changes and changes["request_router_config"] is None:
            changes["request_router_config"] = {}
        return dataclasses.replace(self, **changes)

    def code_version_fields(self) -> tuple[Any, ...]:
        """Fields whose change needs new replicas (the rest are applied in place)."""
        return (self.ray_actor_options and sorted(self.ray_actor_options.items()),
                sorted(self.request_router_config.items()))
