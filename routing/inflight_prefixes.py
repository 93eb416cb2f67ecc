"""Prompts a router sent that the engine has not reported caching yet.

An engine reports a prompt's blocks (``BlockStored``) once it schedules the prompt; until
then an event-fed view does not know the replica will hold them, and a second request
with the same prefix, routed meanwhile, would go elsewhere. This overlay holds each
routed prompt's block keys from ``on_routed`` until its first token (or its end): by then
the engine's report has arrived. Counts per (block, replica), so overlapping prompts
overlap correctly; at most ``max_requests`` prompts are held (the oldest go first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from routing.block_hash import BlockHash

_Entry = tuple[str, tuple[BlockHash, ...], str]


class InflightPrefixes:
    def __init__(self, max_requests: int = 16_384) -> None:
        self.max_requests = max_requests
        self._requests: OrderedDict[str, _Entry] = OrderedDict()
        # index key -> block -> replica -> prompts in flight there holding that block
        self._counts: dict[str, dict[BlockHash, dict[str, int]]] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, request_id: str, index_key: str, hashes: Sequence[BlockHash],
            replica_id: str) -> None:
        self.remove(request_id)
        entry = (index_key, tuple(hashes), replica_id)
        self._requests[request_id] = entry
        counts = self._counts.setdefault(index_key, {})
        for block_hash in entry[1]:
            holders = counts.get(block_hash)
            if holders is None:
                counts[block_hash] = {replica_id: 1}
            else:
                holders[replica_id] = holders.get(replica_id, 0) + 1
        if len(self._requests) > self.max_requests:
            self.remove(next(iter(self._requests)))

    def remove(self, request_id: str) -> None:
        entry = self._requests.pop(request_id, None)
        if entry is None:
            return
        index_key, hashes, replica_id = entry
        counts = self._counts[index_key]
        for block_hash in hashes:
            holders = counts[block_hash]
            left = holders[replica_id] - 1
            if left:
                holders[replica_id] = left
            elif len(holders) == 1:
                del counts[block_hash]
            else:
                del holders[replica_id]
        if not counts:
            del self._counts[index_key]

    def match(self, index_key: str, hashes: Sequence[BlockHash]) -> dict[str, int]:
        """For each replica with a prompt in flight sharing the first block: the shared
        leading blocks."""
        counts = self._counts.get(index_key)
        if not counts or not hashes or hashes[0] not in counts:
            return {}
        result: dict[str, int] = {}
        alive: set[str] | None = None
        for depth, block_hash in enumerate(hashes):
            holders = counts.get(block_hash)
            still = set(holders) if holders else set()
            if alive is not None:
                still &= alive
                for gone in alive - still:
                    result[gone] = depth
            alive = still
            if not alive:
                return result
        for replica_id in alive or ():
            result[replica_id] = len(hashes)
        return result
