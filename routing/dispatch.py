"""One routing lifecycle for both routers: in-flight accounting and the policy's hooks.

The serving core's handle router (``llmserve.serve.router``) and the LLM engine pool
(``llmserve.openai.pool``) each own one :class:`Dispatcher` per deployment or model and
call it at the same points of a request's life, so a policy sees the same sequence from
both: ``on_routed`` when a replica is picked, ``on_first_token`` when its first output
arrives, ``on_finished`` when it ends, and ``on_replicas_changed`` when membership moves.
Pure bookkeeping: no I/O, no clock, no event loop.
"""

from __future__ import annotations

from collections.abc import Sequence

from routing.policy import Candidate, RouteRequest, RoutingPolicy


class Dispatcher:
    """Counts each replica's requests in flight and forwards the lifecycle to a policy."""

    __slots__ = ("_in_flight", "_total", "policy")

    def __init__(self, policy: RoutingPolicy, replica_ids: Sequence[str] = ()) -> None:
        self.policy = policy
        self._in_flight: dict[str, int] = dict.fromkeys(replica_ids, 0)
        self._total = 0
        if replica_ids:
            policy.on_replicas_changed(list(self._in_flight))

    # ---- membership -------------------------------------------------------------------
    @property
    def replica_ids(self) -> list[str]:
        return list(self._in_flight)

    def set_replicas(self, replica_ids: Sequence[str]) -> None:
        """Replicas may now be routed to exactly ``replica_ids``; a leaving replica's
        requests still in flight stop counting (their ``finished`` is then a no-op for
        the count, but still reaches the policy)."""
        old = self._in_flight
        self._in_flight = {rid: old.get(rid, 0) for rid in replica_ids}
        self._total = sum(self._in_flight.values())
        self.policy.on_replicas_changed(list(self._in_flight))

    # ---- accounting -------------------------------------------------------------------
    @property
    def num_in_flight(self) -> int:
        return self._total

    def in_flight_of(self, replica_id: str) -> int:
        return self._in_flight.get(replica_id, 0)

    # ---- one request's life -----------------------------------------------------------
    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> str | None:
        """Rank ``candidates`` with the policy (not when there is only one), route the
        request to the best one with capacity and return its id (None: all are full)."""
        if not candidates:
            return None
        ranked = self.policy.choose(request, candidates) if len(candidates) > 1 else candidates
        for candidate in ranked:
            if candidate.has_capacity:
                self.routed(request, candidate.replica_id)
                return candidate.replica_id
        return None

    def routed(self, request: RouteRequest, replica_id: str) -> None:
        """The request goes to ``replica_id`` (chosen here, pinned, or the only one)."""
        if replica_id in self._in_flight:
            self._in_flight[replica_id] += 1
            self._total += 1
        self.policy.on_routed(request, replica_id)

    def first_token(self, request: RouteRequest, replica_id: str) -> None:
        """The replica's first output for the request arrived (once per request)."""
        self.policy.on_first_token(request, replica_id)

    def finished(self, request: RouteRequest, replica_id: str) -> None:
        """The request ended on ``replica_id``, however it ended (once per request)."""
        count = self._in_flight.get(replica_id, 0)
        if count > 0:
            self._in_flight[replica_id] = count - 1
            self._total -= 1
        self.policy.on_finished(request, replica_id)
