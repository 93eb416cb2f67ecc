"""The per-deployment request router: capacity, queueing, back-pressure and policy."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from llmserve.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaDiedError,
)
from llmserve.serve.runtime import ReplicaRef
from routing import Candidate, RouteRequest, RoutingPolicy, make_policy
from routing.policy import notify_finished, notify_replicas_changed, notify_routed


@dataclass
class _Waiter:
    request: RouteRequest
    future: asyncio.Future[ReplicaRef]


class Router:
    """Keeps each replica at or below ``max_ongoing`` and queues the rest, FIFO."""

    def __init__(self, deployment: str, max_ongoing: int, max_queued: int = -1,
                 policy: RoutingPolicy | None = None) -> None:
        self.deployment = deployment
        self.max_ongoing = max_ongoing
        self.max_queued = max_queued
        self.policy: RoutingPolicy = policy or make_policy("power_of_two")
        self._replicas: dict[str, ReplicaRef] = {}
        self._ongoing: dict[str, int] = {}
        self._waiters: deque[_Waiter] = deque()
        self._closed_reason: str | None = None
        self.reported_ongoing = 0.0  # load served outside the router (see report_ongoing)
        self.remote_ongoing = 0.0  # load other processes' routers report (Ray runtime)

    @property
    def num_queued(self) -> int:
        return len(self._waiters)

    @property
    def num_ongoing(self) -> int:
        return sum(self._ongoing.values())

    @property
    def load(self) -> float:
        """What the autoscaler sees: in flight, queued and reported from outside."""
        return self.num_ongoing + self.num_queued + self.reported_ongoing + self.remote_ongoing

    @property
    def replica_ids(self) -> list[str]:
        return list(self._replicas)

    def ongoing_of(self, replica_id: str) -> int:
        return self._ongoing.get(replica_id, 0)

    def set_replicas(self, replicas: Sequence[ReplicaRef]) -> None:
        self._replicas = {r.replica_id: r for r in replicas}
        self._ongoing = {rid: self._ongoing.get(rid, 0) for rid in self._replicas}
        notify_replicas_changed(self.policy, list(self._replicas))
        self._assign_waiters()

    def close(self, reason: str) -> None:
        """Fail every queued request; later calls fail at once."""
        self._closed_reason = reason
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(DeploymentUnavailableError(reason))

    def acquire_pinned(self, replica_id: str) -> ReplicaRef:
        """Reserve a slot on one given replica, over capacity if need be (control calls)."""
        replica = self._replicas.get(replica_id)
        if replica is None or not replica.is_alive:
            raise ReplicaDiedError(f"replica {replica_id} of {self.deployment!r} is not running")
        self._ongoing[replica_id] += 1
        return replica

    async def acquire(self, request: RouteRequest) -> ReplicaRef:
        """Reserve a slot on a replica, waiting in the queue when all are full."""
        if self._closed_reason is not None:
            raise DeploymentUnavailableError(self._closed_reason)
        if not self._waiters:
            replica = self._pick(request)
            if replica is not None:
                return replica
        if 0 <= self.max_queued <= len(self._waiters):
            raise BackPressureError(self.deployment, len(self._waiters))
        future: asyncio.Future[ReplicaRef] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(request, future)
        self._waiters.append(waiter)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result(), request)  # assigned, but the caller left
            else:
                self._remove_waiter(waiter)
            raise

    def release(self, replica: ReplicaRef, request: RouteRequest) -> None:
        rid = replica.replica_id
        if rid in self._ongoing:
            self._ongoing[rid] -= 1
        notify_finished(self.policy, request, rid)
        if self._waiters:
            self._assign_waiters()

    def _remove_waiter(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _assign_waiters(self) -> None:
        while self._waiters:
            waiter = self._waiters[0]
            if waiter.future.done():
                self._waiters.popleft()
                continue
            replica = self._pick(waiter.request)
            if replica is None:
                return
            self._waiters.popleft()
            waiter.future.set_result(replica)

    def _pick(self, request: RouteRequest) -> ReplicaRef | None:
        if len(self._replicas) == 1:  # nothing to choose: skip building candidates
            (rid, replica), = self._replicas.items()
            if self._ongoing[rid] >= self.max_ongoing or not replica.is_alive:
                return None
            self._ongoing[rid] += 1
            notify_routed(self.policy, request, rid)
            return replica
        candidates = self._candidates(request)
        if not candidates:
            return None
        ranked = self.policy.choose(request, candidates) if len(candidates) > 1 else candidates
        if request.model_id:
            ranked.sort(key=lambda c: request.model_id not in c.model_ids)
        for candidate in ranked:
            if candidate.has_capacity:
                rid = candidate.replica_id
                self._ongoing[rid] += 1
                notify_routed(self.policy, request, rid)
                return self._replicas[rid]
        return None

    def _candidates(self, request: RouteRequest) -> list[Candidate]:
        candidates = []
        for rid, replica in self._replicas.items():
            ongoing = self._ongoing[rid]
            if ongoing >= self.max_ongoing or not replica.is_alive:
                continue
            model_ids = replica.multiplexed_model_ids if request.model_id else frozenset()
            candidates.append(Candidate(rid, ongoing, self.max_ongoing, model_ids))
        return candidates
