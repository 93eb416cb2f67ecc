"""What each replica's prefix cache really holds, from the engine's own KV-cache events.

vLLM reports every block it caches (``BlockStored``: the blocks' hashes, their parent's,
their tokens, the LoRA adapter) and every block it evicts (``BlockRemoved``), or that it
dropped them all (``AllBlocksCleared``). :class:`ClusterCacheView` applies those reports
per replica, so a lookup answers with what is cached now instead of what was sent.

Keys. The engine names a block by its own hash (sha256 by default, seeded, over the
adapter's name *and path*); the router names it by :func:`routing.block_hash.block_hashes`
of the prompt. A stored block is re-keyed from its tokens: its router key chains on its
parent's (the root for a first block), exactly as the router hashes a prompt, so the two
agree whatever hash function, seed or adapter path the engine uses, and only the block
size must match (:class:`BlockSizeMismatch` otherwise). Each replica keeps a map from the
engine's hash to the router key (with a count: the engine may hold two copies of one
block) so a removal finds what to drop. A block whose parent this view never saw (it was
cached before the subscription began) cannot be keyed and is skipped: the router walks a
prompt from its first block, so such a block could not match anyway.

Only replicas marked *live* (their event stream is intact) answer lookups; the others are
left to the router's approximate index. Memory: one map entry per block a replica holds,
and a replica past ``max_blocks_per_replica`` (lost removals) is cleared and counted.
Time is injected (``clock``) so the decay of recent evictions is exact in tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from routing.block_hash import ROOT_HASH, BlockHash, HashFn, salted_extra_keys

EngineHash = Hashable


class BlockSizeMismatch(ValueError):
    """The engine's blocks are not the router's block size: its events cannot be keyed."""


@dataclass(slots=True)
class _Block:
    index_key: str
    key: BlockHash
    copies: int


class _Replica:
    __slots__ = ("bit", "blocks", "evictions", "evictions_at_s", "live")

    def __init__(self, bit: int) -> None:
        self.bit = bit
        self.blocks: dict[EngineHash, _Block] = {}
        self.live = False
        self.evictions = 0.0
        self.evictions_at_s = 0.0


@dataclass(frozen=True)
class ViewCounters:
    stored: int = 0
    removed: int = 0
    unknown_parent: int = 0
    unknown_removed: int = 0
    overflows: int = 0


class ClusterCacheView:
    """One model's replicas' caches, fed by events; shared by every router of the model."""

    def __init__(self, block_size: int, *, hash_fn: HashFn | None = None,
                 max_blocks_per_replica: int = 1 << 21, eviction_half_life_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.max_blocks_per_replica = max_blocks_per_replica
        self.eviction_half_life_s = eviction_half_life_s
        self._hash_fn = hash_fn
        self._clock = clock
        self._replicas: dict[str, _Replica] = {}
        self._ids: dict[int, str] = {}
        self._entries: dict[str, dict[BlockHash, int]] = {}
        self._live_mask = 0
        self.pressure_refresh_s = 0.05
        self._pressures: dict[str, float] | None = None
        self._pressures_at_s = 0.0
        self._counts = {"stored": 0, "removed": 0, "unknown_parent": 0,
                        "unknown_removed": 0, "overflows": 0}

    # ---- what the router asks -----------------------------------------------------------
    @property
    def has_live(self) -> bool:
        return bool(self._live_mask)

    def is_live(self, replica_id: str) -> bool:
        replica = self._replicas.get(replica_id)
        return replica is not None and replica.live

    def match(self, index_key: str, hashes: Sequence[BlockHash]) -> dict[str, int]:
        """For each live replica holding the first block: how many leading blocks it holds."""
        entries = self._entries.get(index_key)
        result: dict[str, int] = {}
        if not entries:
            return result
        alive = self._live_mask
        depth = 0
        for block_hash in hashes:
            still = alive & entries.get(block_hash, 0)
            if still != alive and depth:
                self._record(alive & ~still, depth, result)
            alive = still
            if not alive:
                return result
            depth += 1
        if depth:
            self._record(alive, depth, result)
        return result

    def held_blocks(self, replica_id: str) -> int:
        """Blocks the replica caches now (stored minus removed)."""
        replica = self._replicas.get(replica_id)
        return len(replica.blocks) if replica is not None else 0

    def held_engine_hashes(self, replica_id: str) -> frozenset[EngineHash]:
        """The engine's names of the blocks the replica caches now."""
        replica = self._replicas.get(replica_id)
        return frozenset(replica.blocks) if replica is not None else frozenset()

    def recent_evictions(self, replica_id: str) -> float:
        """Blocks it evicted lately, each weighing half as much per ``eviction_half_life_s``."""
        replica = self._replicas.get(replica_id)
        if replica is None or not replica.evictions:
            return 0.0
        return replica.evictions * self._decay(self._clock() - replica.evictions_at_s)

    def pressure(self, replica_id: str) -> float:
        """How crowded its cache is: what it holds plus what it had to evict lately (a
        replica that evicts is full; a new prefix there would push out another)."""
        return self.held_blocks(replica_id) + self.recent_evictions(replica_id)

    def pressures(self) -> dict[str, float]:
        """:meth:`pressure` of every live replica, recomputed at most every
        ``pressure_refresh_s`` (a decision reads it for every candidate; a tie-breaker a
        few tens of ms old is as good)."""
        now_s = self._clock()
        if self._pressures is None or now_s - self._pressures_at_s >= self.pressure_refresh_s:
            self._pressures = {rid: self.pressure(rid) for rid, r in self._replicas.items()
                               if r.live}
            self._pressures_at_s = now_s
        return self._pressures

    @property
    def counters(self) -> ViewCounters:
        return ViewCounters(**self._counts)

    # ---- what the engines report --------------------------------------------------------
    def set_live(self, replica_id: str, live: bool) -> None:
        """Trust (or stop trusting) this replica's events; either way its view restarts
        empty (after a reconnect or a gap nothing earlier can be relied on)."""
        replica = self._replica(replica_id)
        self.clear(replica_id)
        replica.live = live
        self._pressures = None
        if live:
            self._live_mask |= 1 << replica.bit
        else:
            self._live_mask &= ~(1 << replica.bit)

    def store(self, replica_id: str, index_key: str, parent: EngineHash | None,
              block_hashes: Sequence[EngineHash], token_ids: Sequence[int],
              block_size: int, cache_salt: str | None = None) -> int:
        """Apply a ``BlockStored``; returns how many blocks it keyed. ``cache_salt``: the
        salt in a first block's extra keys (the router hashes it in as vLLM does)."""
        if block_size != self.block_size:
            raise BlockSizeMismatch(
                f"engine block size {block_size} != router block size {self.block_size}")
        replica = self._replica(replica_id)
        if parent is None:
            parent_key: Hashable = ROOT_HASH
        else:
            known = replica.blocks.get(parent)
            if known is None or known.index_key != index_key:
                self._counts["unknown_parent"] += 1
                return 0
            parent_key = known.key
        entries = self._entries.setdefault(index_key, {})
        bit = 1 << replica.bit
        hash_fn = self._hash_fn or hash
        size = self.block_size
        count = min(len(block_hashes), len(token_ids) // size)
        salted = salted_extra_keys(None, cache_salt) if cache_salt and parent is None else None
        for i in range(count):
            extra = salted if i == 0 else None
            parent_key = hash_fn((parent_key, tuple(token_ids[i * size:(i + 1) * size]), extra))
            engine_hash = block_hashes[i]
            block = replica.blocks.get(engine_hash)
            if block is not None:
                block.copies += 1
                continue
            replica.blocks[engine_hash] = _Block(index_key, parent_key, 1)
            entries[parent_key] = entries.get(parent_key, 0) | bit
        self._counts["stored"] += count
        if len(replica.blocks) > self.max_blocks_per_replica:
            self._counts["overflows"] += 1
            self.clear(replica_id)
        return count

    def remove(self, replica_id: str, block_hashes: Sequence[EngineHash]) -> None:
        """Apply a ``BlockRemoved``."""
        replica = self._replicas.get(replica_id)
        if replica is None:
            return
        now_s = self._clock()
        for engine_hash in block_hashes:
            block = replica.blocks.get(engine_hash)
            if block is None:
                self._counts["unknown_removed"] += 1
                continue
            self._counts["removed"] += 1
            replica.evictions = (replica.evictions * self._decay(now_s - replica.evictions_at_s)
                                 + 1.0)
            replica.evictions_at_s = now_s
            block.copies -= 1
            if block.copies <= 0:
                del replica.blocks[engine_hash]
                self._drop_bit(block, ~(1 << replica.bit))

    def clear(self, replica_id: str) -> None:
        """Apply an ``AllBlocksCleared`` (or a restart): the replica holds nothing."""
        replica = self._replicas.get(replica_id)
        if replica is None:
            return
        keep = ~(1 << replica.bit)
        for block in replica.blocks.values():
            self._drop_bit(block, keep)
        replica.blocks.clear()
        replica.evictions = 0.0

    def retain_replicas(self, replica_ids: Sequence[str]) -> None:
        """Forget replicas that left (their bits are reused)."""
        keep = set(replica_ids)
        for replica_id in [r for r in self._replicas if r not in keep]:
            self.set_live(replica_id, False)
            del self._ids[self._replicas.pop(replica_id).bit]

    # ---- internals ----------------------------------------------------------------------
    def _replica(self, replica_id: str) -> _Replica:
        replica = self._replicas.get(replica_id)
        if replica is None:
            bit = next(i for i in range(len(self._ids) + 1) if i not in self._ids)
            replica = self._replicas[replica_id] = _Replica(bit)
            self._ids[bit] = replica_id
        return replica

    def _drop_bit(self, block: _Block, keep: int) -> None:
        entries = self._entries.get(block.index_key)
        if entries is None:
            return
        mask = entries.get(block.key, 0) & keep
        if mask:
            entries[block.key] = mask
        else:
            entries.pop(block.key, None)

    def _record(self, mask: int, depth: int, result: dict[str, int]) -> None:
        while mask:
            low = mask & -mask
            result[self._ids[low.bit_length() - 1]] = depth
            mask ^= low

    def _decay(self, elapsed_s: float) -> float:
        if self.eviction_half_life_s <= 0:
            return 0.0
        return math.pow(0.5, max(0.0, elapsed_s) / self.eviction_half_life_s)
