"""Typed errors of the serving core."""

from __future__ import annotations


class ServeError(Exception):
    """Base class for the core's errors."""


class ConfigError(ServeError, ValueError):
    """An invalid deployment or application option."""


class DeployFailedError(ServeError, RuntimeError):
    """An application's deployment could not reach its target (e.g. a replica's constructor
    or engine failed to start); the first line of the message says which and why."""


class BackPressureError(ServeError):
    """The deployment's queue is full (``max_queued_requests``); retry later."""

    def __init__(self, deployment: str, num_queued: int, retry_after_s: float = 1.0) -> None:
        super().__init__(
            f"deployment {deployment!r} is overloaded: {num_queued} requests already queued"
        )
        self.deployment = deployment
        self.num_queued = num_queued
        self.retry_after_s = retry_after_s


class ReplicaDiedError(ServeError):
    """The replica serving this request died or was stopped while it ran."""


class ReplicaUnavailableError(ReplicaDiedError):
    """The replica was gone before the request started on it (safe to retry)."""


class DeploymentUnavailableError(ServeError):
    """No replica could take the request (deleted deployment, shutdown)."""


class RequestCancelledError(ServeError):
    """The request was cancelled by its caller."""
