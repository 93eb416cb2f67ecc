"""One request's hold on its adapter on every replica it visits (prefill, then decode).

A prefill/decode request runs on two replicas, each an engine of its own: the adapter is
made resident on the chosen prefill replica and then on the chosen decode replica (each
with its own single-flight load and LRU, as for one replica), and each hold keeps the
adapter from being evicted there until :meth:`AdapterHolds.release`. The request is
counted once per adapter in ``llmserve_lora_requests``, as resident only if it was
resident on every replica it visited.
"""

from __future__ import annotations

from typing import Protocol

from llmserve.lora.directory import AdapterDirectory, AdapterTarget
from llmserve.lora.residency import ReplicaAdapters


class AdapterReplica(Protocol):
    url: str
    lora: ReplicaAdapters


class AdapterHolds:
    def __init__(self, directory: AdapterDirectory, target: AdapterTarget) -> None:
        self.directory = directory
        self.target = target
        self._held: list[ReplicaAdapters] = []
        self._all_hits = True
        self._counted = False

    @property
    def adapter_id(self) -> str:
        return self.target.adapter_id

    @property
    def only_urls(self) -> tuple[str, ...] | None:
        """The engines that list a worker adapter (None: any replica can load it)."""
        return self.target.urls

    async def take(self, replica: AdapterReplica, *, last: bool) -> None:
        """Make the adapter resident on ``replica`` and hold it there; ``last``: the
        request's last replica (it is counted then)."""
        hit = await self.directory.acquire(self.target, replica.lora, replica.url,
                                           count=False)
        self._held.append(replica.lora)
        self._all_hits = self._all_hits and hit
        if last and not self._counted:  # a retried decode replica is not a new request
            self._counted = True
            self.directory.count_request(self.target, hit=self._all_hits)

    def lost_by(self, replica: AdapterReplica) -> bool:
        """The replica's engine answered 404 for the adapter (its engine restarted): it is
        no longer resident there and this request's hold there ends. True for an adapter
        the gateway loads (a retry loads it again), False for a worker's own adapter."""
        if self.target.entry is None:
            return False
        replica.lora.forget(self.adapter_id)
        if replica.lora in self._held:
            self._held.remove(replica.lora)
            self.directory.release(self.target, replica.lora)
        return True

    def release(self) -> None:
        """Let go of every hold taken so far (more calls are no-ops)."""
        held, self._held = self._held, []
        for replica in held:
            self.directory.release(self.target, replica)
