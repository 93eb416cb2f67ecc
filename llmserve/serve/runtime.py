"""The runtime seam: start, call, health-check and stop replicas.

Everything that crosses it (``ReplicaSpec``, ``RequestMetadata``, arguments) is plain,
picklable data, so a runtime that places replicas in other processes (Ray) slots in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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


class Runtime(Protocol):
    name: str

    async def start_replica(self, spec: ReplicaSpec) -> ReplicaRef: ...

    async def stop_replica(self, ref: ReplicaRef) -> None:
        """Run the replica's shutdown hook; called once it has drained."""

    async def kill_replica(self, ref: ReplicaRef, reason: str) -> None:
        """Stop at once; requests still running on it fail with ``ReplicaDiedError``."""

    async def shutdown(self) -> None: ...


def make_runtime(name: str) -> Runtime:
    if name == "local":
        from llmserve.serve.local_runtime import LocalRuntime

        return LocalRuntime()
    # "ray": the controller is a detached Ray actor with a runtime of its own; this
    # process only talks to it (`ServeInstance`, `ray/driver_control.py`)
    raise ValueError(f"unknown runtime {name!r}; known: local, ray")
