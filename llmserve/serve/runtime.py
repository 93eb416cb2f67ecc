"""The runtime seam: start, call, health-check and stop replicas.

Everything that crosses it (``ReplicaSpec``, ``RequestMetadata``, arguments) is plain,
picklable data, so a runtime that places replicas in other processes (Ray) slots in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.types import Receive, Scope, Send

from llmserve.serve.config import DeploymentConfig
from llmserve.serve.context import RequestMetadata
from llmserve.serve.status import ReplicaNode


@dataclass(frozen=True)
class ReplicaSpec:
    replica_id: str
    app_name: str
    deployment_name: str
    func_or_class: Any
    init_args: tuple[Any, ...]
    init_kwargs: dict[str, Any]
    config: DeploymentConfig
    version: str
    ingress_app: Any = None
    labels: dict[str, str] = field(default_factory=dict)


class ReplicaRef(Protocol):
    """A started replica, as the router and controller see it."""

    @property
    def replica_id(self) -> str: ...

    @property
    def num_ongoing(self) -> int: ...

    @property
    def multiplexed_model_ids(self) -> frozenset[str]: ...

    @property
    def is_alive(self) -> bool: ...

    @property
    def node(self) -> ReplicaNode | None:
        """Where it runs and what it holds, for status."""

    async def call(self, meta: RequestMetadata, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any: ...

    def stream(self, meta: RequestMetadata, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> AsyncIterator[Any]: ...

    async def handle_http(self, meta: RequestMetadata, scope: Scope, receive: Receive,
                          send: Send) -> None: ...

    async def check_health(self) -> None: ...

    async def reconfigure(self, user_config: Any) -> None: ...


DeploymentKey = tuple[str, str]  # (app, deployment)


@dataclass(frozen=True)
class DeploymentRoutes:
    """One deployment as routers outside the controller's process must see it."""

    app_name: str
    deployment_name: str
    max_ongoing: int
    max_queued: int
    router_config: Mapping[str, Any]
    replica_ids: tuple[str, ...]  # running, in the controller's router
    route_prefix: str | None  # set on an application's ingress deployment only
    is_ingress: bool


@dataclass(frozen=True)
class ControllerLink:
    """What the controller gives the runtime that drives its replicas: the deployments
    (read when the runtime publishes them), and where to report the load that routers
    in other processes put on them (the autoscaler counts it)."""

    routes: Callable[[], list[DeploymentRoutes]]
    report_remote_loads: Callable[[Mapping[DeploymentKey, float]], None]


class Runtime(Protocol):
    name: str

    def link(self, controller: ControllerLink) -> None:
        """Called once, by the controller this runtime serves."""

    async def start_replica(self, spec: ReplicaSpec) -> ReplicaRef: ...

    async def stop_replica(self, ref: ReplicaRef) -> None:
        """Run the replica's shutdown hook; called once it has drained."""

    async def kill_replica(self, ref: ReplicaRef, reason: str) -> None:
        """Stop at once; requests still running on it fail with ``ReplicaDiedError``."""

    async def shutdown(self) -> None: ...
