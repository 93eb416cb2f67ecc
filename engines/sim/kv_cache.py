"""A paged KV cache with prefix caching that follows vLLM v1 (``vllm/v1/core``).

The rules copied from vLLM 0.32 (``kv_cache_utils.py``, ``block_pool.py``,
``kv_cache_manager.py``, ``single_type_kv_cache_manager.py``):

- Only full blocks of ``block_size`` tokens are hashed. A block's hash is the
  hash of ``(parent_block_hash or NONE_HASH, block_token_ids, extra_keys)``;
  ``extra_keys`` holds ``("lora", name, path)`` for LoRA requests and
  ``("cache_salt", salt)`` on the first block. Hashes cover every token of the
  request (prompt and output), so generated tokens become cacheable too.
- Block 0 is the null block and is never handed out; usage is
  ``1 - free / (num_blocks - 1)``.
- A lookup may hit at most ``num_tokens - 1`` tokens (the last prompt token is
  always recomputed to get logits), in whole blocks, from the start, stopping at
  the first miss.
- A hit block that sits in the free queue is taken out of it (``touch``).
- Freed blocks go to the free queue tail last-block-first, so a request's tail
  is evicted before its head; blocks without a hash go to the front. New blocks
  are taken from the front, dropping any hash they still carry (eviction).
- Blocks are cached (hashed) when they are allocated for tokens that the step
  will compute, so a request admitted later in the same step can hit them.
- ``NONE_HASH`` is vLLM's default (sha256 of the seed ``"vllm-none-hash"``), so with the
  default ``sha256`` the simulator's block hashes are vLLM's, byte for byte.
- With ``record_events``, it logs what vLLM's ``BlockPool`` reports as KV-cache events
  (``block_pool.py``): one :class:`StoredBlocks` per call that caches new full blocks of a
  request (their hashes, the parent's, their tokens, the adapter), one
  :class:`RemovedBlock` per evicted hashed block; ``take_events`` drains the log.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

BlockHash = bytes
ExtraKeys = tuple[tuple[str, ...], ...]

NONE_HASH: BlockHash = hashlib.sha256(pickle.dumps("vllm-none-hash", protocol=5)).digest()


def hash_block_tokens(
    parent_hash: BlockHash | None,
    token_ids: Sequence[int],
    extra_keys: ExtraKeys | None = None,
) -> BlockHash:
    """One block's hash, chained on its parent's (vLLM's ``hash_block_tokens``)."""
    payload = (parent_hash or NONE_HASH, tuple(token_ids), extra_keys)
    return hashlib.sha256(pickle.dumps(payload, protocol=5)).digest()


def block_extra_keys(
    block_index: int, lora: tuple[str, str] | None, cache_salt: str | None
) -> ExtraKeys | None:
    """vLLM's ``generate_block_hash_extra_keys`` for text-only requests."""
    keys: list[tuple[str, ...]] = []
    if lora is not None:
        keys.append(("lora", lora[0], lora[1]))
    if cache_salt and block_index == 0:
        keys.append(("cache_salt", cache_salt))
    return tuple(keys) or None


def extend_block_hashes(
    hashes: list[BlockHash],
    token_ids: Sequence[int],
    block_size: int,
    lora: tuple[str, str] | None = None,
    cache_salt: str | None = None,
) -> None:
    """Append the hashes of full blocks of ``token_ids`` not yet in ``hashes``."""
    start = len(hashes) * block_size
    while start + block_size <= len(token_ids):
        parent = hashes[-1] if hashes else None
        extra = block_extra_keys(len(hashes), lora, cache_salt)
        hashes.append(hash_block_tokens(parent, token_ids[start : start + block_size], extra))
        start += block_size


class BlockSource(Protocol):
    """What a cached block's event says about the request that computed it."""

    @property
    def all_token_ids(self) -> Sequence[int]: ...

    @property
    def lora_key(self) -> tuple[str, str] | None: ...

    @property
    def cache_salt(self) -> str | None: ...


@dataclass(frozen=True)
class StoredBlocks:
    """vLLM's ``BlockStored``: full blocks a request cached, in chain order."""

    block_hashes: tuple[BlockHash, ...]
    parent_block_hash: BlockHash | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_name: str | None
    extra_keys: tuple[tuple[str, ...] | None, ...]  # one entry per block, as vLLM's


@dataclass(frozen=True)
class RemovedBlock:
    """vLLM's ``BlockRemoved`` (one per evicted block, as vLLM sends them)."""

    block_hash: BlockHash


CacheEvent = StoredBlocks | RemovedBlock


def _event_extra_keys(keys: ExtraKeys | None) -> tuple[str, ...] | None:
    """vLLM's ``to_event_extra_keys`` for one block: the keys without their tags."""
    return None if keys is None else tuple(key[1] for key in keys)


class KVBlock:
    """One physical block: mutable bookkeeping, as in vLLM's ``KVCacheBlock``."""

    __slots__ = ("block_hash", "block_id", "ref_cnt")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: BlockHash | None = None


@dataclass(frozen=True)
class PrefixHit:
    """Cached blocks found for a request's prefix."""

    blocks: tuple[KVBlock, ...] = ()
    block_size: int = 1

    @property
    def num_tokens(self) -> int:
        return len(self.blocks) * self.block_size


@dataclass(frozen=True)
class PrefixCacheStats:
    """Token counts, as vLLM's ``vllm:prefix_cache_queries`` / ``..._hits`` count them."""

    requests: int = 0
    queries: int = 0
    hits: int = 0
    preempted_requests: int = 0
    preempted_queries: int = 0
    preempted_hits: int = 0

    def record(self, num_tokens: int, num_hits: int, preempted: bool) -> PrefixCacheStats:
        if preempted:
            return PrefixCacheStats(
                self.requests,
                self.queries,
                self.hits,
                self.preempted_requests + 1,
                self.preempted_queries + num_tokens,
                self.preempted_hits + num_hits,
            )
        return PrefixCacheStats(
            self.requests + 1,
            self.queries + num_tokens,
            self.hits + num_hits,
            self.preempted_requests,
            self.preempted_queries,
            self.preempted_hits,
        )


class KVCache:
    """Block pool + per-request block tables (vLLM's ``BlockPool`` + ``KVCacheManager``)."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True,
                 record_events: bool = False) -> None:
        if num_blocks < 2:
            raise ValueError("num_blocks must be >= 2 (block 0 is the null block)")
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, KVBlock] = OrderedDict(
            (block.block_id, block) for block in self.blocks[1:]
        )
        self._cached: dict[BlockHash, dict[int, KVBlock]] = {}
        self._req_blocks: dict[str, list[KVBlock]] = {}
        self._req_num_cached: dict[str, int] = {}
        self.stats = PrefixCacheStats()
        self._events: list[CacheEvent] | None = [] if record_events else None

    def take_events(self) -> list[CacheEvent]:
        """The events since the last call (none unless ``record_events``)."""
        events = self._events or []
        if self._events:
            self._events = []
        return events

    # -- observation -----------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of usable blocks held by requests (vLLM's ``kv_cache_usage_perc``)."""
        return 1.0 - self.num_free_blocks / (self.num_blocks - 1)

    @property
    def num_cached_blocks(self) -> int:
        return sum(len(blocks) for blocks in self._cached.values())

    def block_ids(self, request_id: str) -> tuple[int, ...]:
        return tuple(block.block_id for block in self._req_blocks.get(request_id, ()))

    def free_queue_ids(self) -> tuple[int, ...]:
        """Free block ids, next to be evicted first."""
        return tuple(self._free)

    def is_cached(self, block_hash: BlockHash) -> bool:
        return bool(self._cached.get(block_hash))

    # -- prefix lookup ---------------------------------------------------------------

    def find_cached_prefix(self, block_hashes: Sequence[BlockHash], num_tokens: int) -> PrefixHit:
        """Longest run of cached full blocks from the start, hitting at most ``num_tokens - 1``."""
        if not self.enable_caching:
            return PrefixHit(block_size=self.block_size)
        max_blocks = max(0, num_tokens - 1) // self.block_size
        found: list[KVBlock] = []
        for block_hash in block_hashes[:max_blocks]:
            candidates = self._cached.get(block_hash)
            if not candidates:
                break
            found.append(next(iter(candidates.values())))
        return PrefixHit(tuple(found), self.block_size)

    def record_lookup(self, num_tokens: int, num_hits: int, preempted: bool) -> None:
        self.stats = self.stats.record(num_tokens, num_hits, preempted)

    # -- allocation ------------------------------------------------------------------

    def num_blocks_needed(
        self, request_id: str, num_tokens: int, hit: PrefixHit | None = None
    ) -> int:
        held = len(self._req_blocks.get(request_id, ()))
        hit_blocks = len(hit.blocks) if hit else 0
        return max(0, -(-num_tokens // self.block_size) - held - hit_blocks)

    def allocate(
        self,
        request_id: str,
        block_hashes: Sequence[BlockHash],
        num_tokens_after_step: int,
        num_known_tokens: int,
        hit: PrefixHit | None = None,
        source: BlockSource | None = None,
    ) -> bool:
        """Hold blocks for ``num_tokens_after_step`` tokens; False (no change) if they don't fit.

        ``num_known_tokens`` is the request's token count (prompt + sampled
        outputs): only blocks of known tokens are hashed. ``source`` (the request) fills
        in the events' tokens and adapter.
        """
        hit_blocks = hit.blocks if hit else ()
        needed = self.num_blocks_needed(request_id, num_tokens_after_step, hit)
        evictable_hits = sum(1 for block in hit_blocks if block.ref_cnt == 0)
        if needed > self.num_free_blocks - evictable_hits:
            return False
        held = self._req_blocks.setdefault(request_id, [])
        self._touch(hit_blocks)
        held.extend(hit_blocks)
        if hit_blocks:
            self._req_num_cached[request_id] = len(held)
        held.extend(self._take_free(needed))
        num_full = min(num_tokens_after_step, num_known_tokens) // self.block_size
        self._cache_full_blocks(request_id, block_hashes, num_full, source)
        return True

    def free(self, request_id: str) -> None:
        """Release a request's blocks, tail first, into the free queue."""
        held = self._req_blocks.pop(request_id, [])
        self._req_num_cached.pop(request_id, None)
        self._release(reversed(held))

    # -- internals -------------------------------------------------------------------

    def _touch(self, blocks: Iterable[KVBlock]) -> None:
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def _take_free(self, count: int) -> list[KVBlock]:
        taken: list[KVBlock] = []
        for _ in range(count):
            _, block = self._free.popitem(last=False)
            self._evict(block)
            block.ref_cnt = 1
            taken.append(block)
        return taken

    def _evict(self, block: KVBlock) -> None:
        if block.block_hash is None:
            return
        if self._events is not None:
            self._events.append(RemovedBlock(block.block_hash))
        holders = self._cached.get(block.block_hash, {})
        holders.pop(block.block_id, None)
        if not holders:
            self._cached.pop(block.block_hash, None)
        block.block_hash = None

    def _release(self, ordered: Iterable[KVBlock]) -> None:
        evict_first: list[KVBlock] = []
        for block in ordered:
            block.ref_cnt -= 1
            if block.ref_cnt > 0:
                continue
            if block.block_hash is None:
                evict_first.append(block)
            else:
                self._free[block.block_id] = block
        for block in reversed(evict_first):
            self._free[block.block_id] = block
            self._free.move_to_end(block.block_id, last=False)

    def _cache_full_blocks(
        self,
        request_id: str,
        block_hashes: Sequence[BlockHash],
        num_full: int,
        source: BlockSource | None = None,
    ) -> None:
        if not self.enable_caching:
            return
        held = self._req_blocks[request_id]
        start = self._req_num_cached.get(request_id, 0)
        end = min(num_full, len(block_hashes), len(held))
        for index in range(start, end):
            block = held[index]
            if block.block_hash is None:
                block.block_hash = block_hashes[index]
                self._cached.setdefault(block.block_hash, {})[block.block_id] = block
        if end > start:
            self._req_num_cached[request_id] = end
            if self._events is not None and source is not None:
                self._events.append(self._stored(block_hashes, start, end, source))

    def _stored(
        self, block_hashes: Sequence[BlockHash], start: int, end: int, source: BlockSource
    ) -> StoredBlocks:
        size = self.block_size
        lora = source.lora_key
        extra = tuple(
            _event_extra_keys(block_extra_keys(i, lora, source.cache_salt))
            for i in range(start, end)
        )
        return StoredBlocks(
            tuple(block_hashes[start:end]),
            block_hashes[start - 1] if start else None,
            tuple(source.all_token_ids[start * size : end * size]),
            size,
            lora[0] if lora else None,
            extra,
        )
