"""An in-memory runtime for stepping the controller: replicas are records whose start,
health and load the test decides, and a clock the test moves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Receive, Scope, Send

from llmserve.serve.context import RequestMetadata
from llmserve.serve.runtime import ControllerLink, ReplicaSpec
from llmserve.serve.status import ReplicaNode


class FakeClock:
    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class FakeReplica:
    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec
        self.replica_id = spec.replica_id
        self.num_ongoing = 0
        self.multiplexed_model_ids: frozenset[str] = frozenset()
        self.is_alive = True
        self.healthy = True
        self.health_checks = 0
        self.user_configs: list[Any] = []

    @property
    def node(self) -> ReplicaNode | None:
        return None

    async def call(self, meta: RequestMetadata, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        return self.spec.init_args

    async def stream(self, meta: RequestMetadata, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        yield self.spec.init_args

    async def handle_http(self, meta: RequestMetadata, scope: Scope, receive: Receive,
                          send: Send) -> None:
        raise NotImplementedError

    async def check_health(self) -> None:
        self.health_checks += 1
        if not self.healthy:
            raise RuntimeError("sick")

    async def reconfigure(self, user_config: Any) -> None:
        self.user_configs.append(user_config)


class FakeRuntime:
    """Starts at once, unless the test holds starts (`hold_starts`) and releases each
    with `finish_start` or `fail_start`."""

    name = "fake"

    def __init__(self) -> None:
        self.link_given: ControllerLink | None = None
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.killed: list[tuple[str, str]] = []
        self.replicas: dict[str, FakeReplica] = {}
        self.hold_starts = False
        self.pending: dict[str, asyncio.Future[None]] = {}

    def link(self, controller: ControllerLink) -> None:
        self.link_given = controller

    async def start_replica(self, spec: ReplicaSpec) -> FakeReplica:
        self.started.append(spec.replica_id)
        if self.hold_starts:
            gate = self.pending[spec.replica_id] = asyncio.get_running_loop().create_future()
            await gate
        replica = self.replicas[spec.replica_id] = FakeReplica(spec)
        return replica

    def finish_start(self, replica_id: str) -> None:
        self.pending.pop(replica_id).set_result(None)

    def fail_start(self, replica_id: str, error: Exception) -> None:
        self.pending.pop(replica_id).set_exception(error)

    async def stop_replica(self, ref: FakeReplica) -> None:  # type: ignore[override]
        self.stopped.append(ref.replica_id)
        ref.is_alive = False

    async def kill_replica(self, ref: FakeReplica, reason: str) -> None:  # type: ignore[override]
        self.killed.append((ref.replica_id, reason))
        ref.is_alive = False

    async def shutdown(self) -> None:
        return None

    def running(self, deployment: str) -> list[str]:
        return [rid for rid, r in self.replicas.items()
                if r.is_alive and r.spec.deployment_name == deployment]
