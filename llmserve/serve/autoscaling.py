"""Autoscaling: a pure policy over a snapshot, plus the metric window that feeds it."""

from __future__ import annotations

import importlib
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from llmserve.serve.config import AutoscalingConfig


@dataclass(frozen=True)
class AutoscalingContext:
    config: AutoscalingConfig
    current_replicas: int
    running_replicas: int
    total_ongoing_requests: float
    total_queued_requests: int
    now_s: float


@dataclass(frozen=True)
class AutoscalingState:
    upscale_since_s: float | None = None
    downscale_since_s: float | None = None


AutoscalingPolicy = Callable[[AutoscalingContext, Any], tuple[int, Any]]


def clamp(config: AutoscalingConfig, replicas: int) -> int:
    return max(config.min_replicas, min(config.max_replicas, replicas))


def desired_replicas(ctx: AutoscalingContext) -> int:
    """Replicas needed to bring ongoing requests per replica to the target, smoothed."""
    cfg = ctx.config
    current = ctx.current_replicas
    if current == 0:
        return 1 if ctx.total_ongoing_requests > 0 or ctx.total_queued_requests > 0 else 0
    raw = ctx.total_ongoing_requests / cfg.target_ongoing_requests
    if raw > current:
        return math.ceil(current + (raw - current) * cfg.upscaling_factor)
    if raw < current:
        return max(0, math.ceil(current - (current - raw) * cfg.downscaling_factor))
    return current


def default_autoscaling_policy(
    ctx: AutoscalingContext, state: AutoscalingState | None
) -> tuple[int, AutoscalingState]:
    """Ray Serve's rule: scale when the decision has held for the configured delay.

    Scaling from zero happens at once (a queued request must wake a replica).
    """
    state = state or AutoscalingState()
    cfg = ctx.config
    current = ctx.current_replicas
    target = clamp(cfg, desired_replicas(ctx))
    if current == 0 and target > 0:
        return target, AutoscalingState()
    if target > current:
        since = state.upscale_since_s if state.upscale_since_s is not None else ctx.now_s
        if ctx.now_s - since >= cfg.upscale_delay_s:
            return target, AutoscalingState()
        return current, AutoscalingState(upscale_since_s=since)
    if target < current:
        since = state.downscale_since_s if state.downscale_since_s is not None else ctx.now_s
        if ctx.now_s - since >= cfg.downscale_delay_s:
            return target, AutoscalingState()
        return current, replace(AutoscalingState(), downscale_since_s=since)
    return current, AutoscalingState()


def resolve_policy(policy: str | Callable[..., Any] | None) -> AutoscalingPolicy:
    if policy is None:
        return default_autoscaling_policy
    if callable(policy):
        return policy
    module_name, sep, attr = policy.replace(":", ".").rpartition(".")
    if not sep:
        raise ValueError(f"autoscaling policy {policy!r} must be 'module:function'")
    resolved: AutoscalingPolicy = getattr(importlib.import_module(module_name), attr)
    return resolved


class MetricWindow:
    """Samples of (time, ongoing) over the look-back period; the mean feeds the policy."""

    def __init__(self, look_back_s: float) -> None:
        self.look_back_s = look_back_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now_s: float, value: float) -> None:
        self._samples.append((now_s, value))
        while self._samples and self._samples[0][0] < now_s - self.look_back_s:
            self._samples.popleft()

    def mean(self) -> float:
        if not self._samples:
            return 0.0
        return sum(v for _, v in self._samples) / len(self._samples)
