"""What `serve.status()` returns: plain frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ReplicaState(StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    UNHEALTHY = "UNHEALTHY"


class DeploymentStatusCode(StrEnum):
    UPDATING = "UPDATING"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DEPLOY_FAILED = "DEPLOY_FAILED"


@dataclass(frozen=True)
class ReplicaStatus:
    replica_id: str
    state: ReplicaState
    version: str
    num_ongoing_requests: int


@dataclass(frozen=True)
class DeploymentStatus:
    name: str
    status: DeploymentStatusCode
    message: str
    target_replicas: int
    num_queued_requests: int
    replicas: list[ReplicaStatus] = field(default_factory=list)

    @property
    def running_replicas(self) -> int:
        return sum(1 for r in self.replicas if r.state is ReplicaState.RUNNING)


@dataclass(frozen=True)
class ApplicationStatus:
    name: str
    route_prefix: str | None
    status: DeploymentStatusCode
    ingress_deployment: str
    deployments: dict[str, DeploymentStatus] = field(default_factory=dict)


@dataclass(frozen=True)
class ServeStatus:
    runtime: str
    http_url: str | None
    applications: dict[str, ApplicationStatus] = field(default_factory=dict)
