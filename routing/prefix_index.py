"""An approximate prefix tree over block hashes: which replica holds which prompt prefix.

Because a block hash names its whole prefix (:mod:`routing.block_hash`), a flat map from
block hash to owners *is* a radix tree over blocks: walking a prompt's hashes from the
first block down to the first miss is walking the tree from its root. Each entry keeps a
bitmask of the replicas believed to hold that block (the router inserts a prompt's blocks
for the replica it sent the prompt to; it never sees the engine's own evictions, hence
"approximate").

Entries live in LRU order. Inserting a prompt touches its blocks from the last to the
first, so a prefix is always more recent than its extensions and eviction removes
branches from the leaves inward, like the engine's own cache. The index stays under
``max_bytes`` (estimated per entry, see :data:`ENTRY_BYTES`, and checked with tracemalloc
in ``benchmarks/routing/decision_time.py``). ``retain_replicas`` drops what a departed
replica held.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from routing.block_hash import BlockHash

# CPython 3.11, 64-bit: an OrderedDict slot (dict entry + linked-list node, with the
# table's spare capacity) and the int key; the owner mask is usually a cached small int.
ENTRY_BYTES = 150


class PrefixIndex:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_bytes < ENTRY_BYTES:
            raise ValueError(f"max_bytes must be at least {ENTRY_BYTES}")
        self.max_entries = max_bytes // ENTRY_BYTES
        self._entries: OrderedDict[BlockHash, int] = OrderedDict()
        self._bits: dict[str, int] = {}
        self._ids: dict[int, str] = {}
        self._blocks_of: dict[str, int] = {}
        self.evicted_blocks = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def estimated_bytes(self) -> int:
        return len(self._entries) * ENTRY_BYTES

    @property
    def replica_ids(self) -> list[str]:
        return list(self._bits)

    @property
    def blocks_per_replica(self) -> dict[str, int]:
        """``cached_blocks`` of every replica (read-only by convention: the live dict)."""
        return self._blocks_of

    def cached_blocks(self, replica_id: str) -> int:
        """Blocks inserted for ``replica_id`` and not known to be evicted (approximate)."""
        return self._blocks_of.get(replica_id, 0)

    def match(self, hashes: Sequence[BlockHash]) -> dict[str, int]:
        """For each replica holding the first block: how many leading blocks it holds."""
        result: dict[str, int] = {}
        alive = -1
        entries = self._entries
        depth = 0
        for block_hash in hashes:
            mask = entries.get(block_hash, 0)
            still = alive & mask
            if still != alive and depth:
                self._record(alive & ~still, depth, result)
            alive = still
            if not alive:
                return result
            depth += 1
        if depth:
            self._record(alive, depth, result)
        return result

    def _record(self, mask: int, depth: int, result: dict[str, int]) -> None:
        while mask:
            low = mask & -mask
            replica_id = self._ids.get(low.bit_length() - 1)
            if replica_id is not None:
                result[replica_id] = depth
            mask ^= low

    def insert(self, hashes: Sequence[BlockHash], replica_id: str) -> None:
        """Record that ``replica_id`` now holds every block of ``hashes``."""
        bit = 1 << self._bit_of(replica_id)
        entries = self._entries
        added = 0
        for block_hash in reversed(hashes):
            mask = entries.get(block_hash)
            if mask is None:
                entries[block_hash] = bit
                added += 1
            else:
                if not mask & bit:
                    entries[block_hash] = mask | bit
                    added += 1
                entries.move_to_end(block_hash)
        self._blocks_of[replica_id] = self._blocks_of.get(replica_id, 0) + added
        self._evict()

    def _evict(self) -> None:
        entries = self._entries
        while len(entries) > self.max_entries:
            _, mask = entries.popitem(last=False)
            self.evicted_blocks += 1
            while mask:
                low = mask & -mask
                replica_id = self._ids.get(low.bit_length() - 1)
                if replica_id is not None:
                    self._blocks_of[replica_id] -= 1
                mask ^= low

    def _bit_of(self, replica_id: str) -> int:
        bit = self._bits.get(replica_id)
        if bit is None:
            used = set(self._ids)
            bit = next(i for i in range(len(used) + 1) if i not in used)
            self._bits[replica_id] = bit
            self._ids[bit] = replica_id
            self._blocks_of[replica_id] = 0
        return bit

    def remove_replica(self, replica_id: str) -> None:
        """Forget everything ``replica_id`` held (it went away); frees its bit."""
        bit = self._bits.pop(replica_id, None)
        if bit is None:
            return
        del self._ids[bit]
        self._blocks_of.pop(replica_id, None)
        clear = ~(1 << bit)
        entries = self._entries
        for block_hash in [h for h, m in entries.items() if m >> bit & 1]:
            mask = entries[block_hash] & clear
            if mask:
                entries[block_hash] = mask
            else:
                del entries[block_hash]

    def retain_replicas(self, replica_ids: Iterable[str]) -> None:
        keep = set(replica_ids)
        for replica_id in [r for r in self._bits if r not in keep]:
            self.remove_replica(replica_id)
