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
from routing.dispatch import Dispatcher


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
        self.dispatcher = Dispatcher(policy or make_policy("power_of_two"))
        self._replicas: dict[str, ReplicaRef] = {}
        self._waiters: deque[_Waiter] = deque()
        self._closed_reason: str | None = None
        self.reported_ongoing = 0.0  # load served outside the router (see report_ongoing)
        self.remote_ongoing = 0.0  # load other processes' routers report (Ray runtime)

    @property
    def num_queued(self) -> int:
        return len(self._waiters)

    @property
    def policy(self) -> RoutingPolicy:
        return self.dispatcher.policy

    @property
    def num_ongoing(self) -> int:
        return self.dispatcher.num_in_flight

    @property
    def load(self) -> float:
        """What the autoscaler sees: in flight, queued and reported from outside."""
        return self.num_ongoing + self.num_queued + self.reported_ongoing + self.remote_ongoing

    @property
    def replica_ids(self) -> list[str]:
        return list(self._replicas)

    def ongoing_of(self, replica_id: str) -> int:
        return self.dispatcher.in_flight_of(replica_id)

    def set_replicas(self, replicas: Sequence[ReplicaRef]) -> None:
        self._replicas = {r.replica_id: r for r in replicas}
        self.dispatcher.set_replicas(list(self._replicas))
        self._assign_waiters()

    def close(self, reason: str) -> None:
        """Fail every queued request; later calls fail at once."""
        self._closed_reason = reason
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(DeploymentUnavailableError(reason))

    def acquire_pinned(self, replica_id: str, request: RouteRequest) -> ReplicaRef:
        """Reserve a slot on one given replica, over capacity if need be (control calls)."""
        replica = self._replicas.get(replica_id)
        if replica is None or not replica.is_alive:
            raise ReplicaDiedError(f"replica {replica_id} of {self.deployment!r} is not running")
        self.dispatcher.routed(request, replica_id)
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

    def first_output(self, replica: ReplicaRef, request: RouteRequest) -> None:
        """The replica answered the request (its result, or a stream's first item)."""
        self.dispatcher.first_token(request, replica.replica_id)

    def release(self, replica: ReplicaRef, request: RouteRequest) -> None:
        self.dispatcher.finished(request, replica.replica_id)
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
            if self.dispatcher.in_flight_of(rid) >= self.max_ongoing or not replica.is_alive:
                return None
            self.dispatcher.routed(request, rid)
            return replica
        chosen = self.dispatcher.choose(request, self._candidates(request))
        return self._replicas[chosen] if chosen is not None else None

    def _candidates(self, request: RouteRequest) -> list[Candidate]:
        """Live replicas with a free slot; those already serving the request's multiplexed
        model only, when there are any."""
        candidates = []
        for rid, replica in self._replicas.items():
            ongoing = self.dispatcher.in_flight_of(rid)
            if ongoing >= self.max_ongoing or not replica.is_alive:
                continue
            model_ids = replica.multiplexed_model_ids if request.model_id else frozenset()
            candidates.append(Candidate(rid, ongoing, self.max_ongoing, model_ids))
        if request.model_id:
            holding = [c for c in candidates if request.model_id in c.model_ids]
            return holding or candidates
        return candidates
