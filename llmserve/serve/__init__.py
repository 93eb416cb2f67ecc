"""The serving core. Public names mirror ``ray.serve``: change the import, keep the code."""

from __future__ import annotations

from llmserve.serve.api import (
    delete,
    get_app_handle,
    get_deployment_handle,
    http_url,
    run,
    run_until_signal,
    shutdown,
    start,
    status,
)
from llmserve.serve.autoscaling import AutoscalingContext, default_autoscaling_policy
from llmserve.serve.batching import batch
from llmserve.serve.config import AutoscalingConfig, DeploymentConfig
from llmserve.serve.context import get_multiplexed_model_id, get_replica_context
from llmserve.serve.deployment import Application, Deployment, deployment, ingress
from llmserve.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaDiedError,
    ServeError,
)
from llmserve.serve.handle import (
    DeploymentHandle,
    DeploymentResponse,
    DeploymentResponseGenerator,
)
from llmserve.serve.multiplex import multiplexed

__all__ = [
    "Application",
    "AutoscalingConfig",
    "AutoscalingContext",
    "BackPressureError",
    "Deployment",
    "DeploymentConfig",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "DeploymentUnavailableError",
    "ReplicaDiedError",
    "ServeError",
    "batch",
    "default_autoscaling_policy",
    "delete",
    "deployment",
    "get_app_handle",
    "get_deployment_handle",
    "get_multiplexed_model_id",
    "get_replica_context",
    "http_url",
    "ingress",
    "multiplexed",
    "run",
    "run_until_signal",
    "shutdown",
    "start",
    "status",
]
