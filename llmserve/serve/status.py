"""What `serve.status()` returns: plain frozen dataclasses (and their JSON form)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


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


class ApplicationStatusCode(StrEnum):
    """Ray Serve's application status values (deployments have their own, above)."""

    DEPLOYING = "DEPLOYING"
    RUNNING = "RUNNING"
    UNHEALTHY = "UNHEALTHY"
    DEPLOY_FAILED = "DEPLOY_FAILED"

    @classmethod
    def of(cls, deployments: set[DeploymentStatusCode]) -> ApplicationStatusCode:
        """The application's status from its deployments', worst first."""
        if DeploymentStatusCode.DEPLOY_FAILED in deployments:
            return cls.DEPLOY_FAILED
        if DeploymentStatusCode.UNHEALTHY in deployments:
            return cls.UNHEALTHY
        if DeploymentStatusCode.UPDATING in deployments:
            return cls.DEPLOYING
        return cls.RUNNING


@dataclass(frozen=True)
class ReplicaNode:
    """Where a replica runs and what it holds (Ray's assignment; declared options on the
    local runtime)."""

    node_id: str
    node_ip: str
    hostname: str
    pid: int
    resources: dict[str, float] = field(default_factory=dict)
    gpu_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReplicaStatus:
    replica_id: str
    state: ReplicaState
    version: str
    num_ongoing_requests: int
    node: ReplicaNode | None = None  # None while the replica is still being placed


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
    status: ApplicationStatusCode
    ingress_deployment: str
    deployments: dict[str, DeploymentStatus] = field(default_factory=dict)


@dataclass(frozen=True)
class ServeStatus:
    runtime: str
    http_url: str | None
    applications: dict[str, ApplicationStatus] = field(default_factory=dict)


def status_to_json(status: ServeStatus) -> dict[str, Any]:
    """Plain JSON-ready dicts (what ``GET /-/status`` returns)."""
    data = asdict(status)
    for app_name, app in status.applications.items():
        for dep_name, dep in app.deployments.items():
            data["applications"][app_name]["deployments"][dep_name]["running_replicas"] = (
                dep.running_replicas)
    return data
