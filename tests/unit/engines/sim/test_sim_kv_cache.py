from __future__ import annotations

from engines.sim.kv_cache import (
    NONE_HASH,
    KVCache,
    extend_block_hashes,
    hash_block_tokens,
)


def hashes_of(
    tokens: list[int], block_size: int, lora: tuple[str, str] | None = None
) -> list[bytes]:
    out: list[bytes] = []
    extend_block_hashes(out, tokens, block_size, lora)
    return out


def test_only_full_blocks_are_hashed_and_chained() -> None:
    tokens = list(range(10))
    hashes = hashes_of(tokens, 4)
    assert len(hashes) == 2
    assert hashes[0] == hash_block_tokens(None, [0, 1, 2, 3])
    assert hashes[0] == hash_block_tokens(NONE_HASH, [0, 1, 2, 3])
    assert hashes[1] == hash_block_tokens(hashes[0], [4, 5, 6, 7])
    # Same second block after a different first block: a different hash (chaining).
    other = hashes_of([9, 1, 2, 3, 4, 5, 6, 7], 4)
    assert other[1] != hashes[1]
    assert hashes_of(tokens[:8], 4) == hashes


def test_lora_name_and_path_are_part_of_the_hash() -> None:
    tokens = list(range(8))
    base = hashes_of(tokens, 4)
    with_a = hashes_of(tokens, 4, ("a", "/a"))
    assert base[0] != with_a[0]
    assert with_a != hashes_of(tokens, 4, ("a", "/other"))
    assert with_a == hashes_of(tokens, 4, ("a", "/a"))


def allocate_prompt(cache: KVCache, request_id: str, tokens: list[int]) -> list[bytes]:
    hashes = hashes_of(tokens, cache.block_size)
    hit = cache.find_cached_prefix(hashes, len(tokens))
    assert cache.allocate(request_id, hashes, len(tokens), len(tokens), hit)
    cache.record_lookup(len(tokens), hit.num_tokens, preempted=False)
    return hashes


def test_hit_stops_one_token_short_of_the_prompt() -> None:
    cache = KVCache(num_blocks=16, block_size=4)
    tokens = list(range(12))
    hashes = allocate_prompt(cache, "a", tokens)
    cache.free("a")
    # 12 tokens: at most 11 may hit -> 2 whole blocks.
    assert cache.find_cached_prefix(hashes, 12).num_tokens == 8
    # 13 tokens sharing the 12: all 3 blocks hit.
    longer = hashes_of([*tokens, 99], 4)
    assert cache.find_cached_prefix(longer, 13).num_tokens == 12


def test_hit_stops_at_first_missing_block() -> None:
    cache = KVCache(num_blocks=16, block_size=4)
    allocate_prompt(cache, "a", list(range(12)))
    diverging = hashes_of([0, 1, 2, 3, 9, 9, 9, 9, 8, 9, 10, 11, 12], 4)
    assert cache.find_cached_prefix(diverging, 13).num_tokens == 4


def test_prefix_stats_count_tokens_like_vllm() -> None:
    cache = KVCache(num_blocks=16, block_size=4)
    allocate_prompt(cache, "a", list(range(10)))
    allocate_prompt(cache, "b", list(range(10)))
    assert cache.stats.requests == 2
    assert cache.stats.queries == 20
    assert cache.stats.hits == 8
    cache.record_lookup(10, 8, preempted=True)
    assert (cache.stats.queries, cache.stats.hits) == (20, 8)
    assert (cache.stats.preempted_queries, cache.stats.preempted_hits) == (10, 8)


def test_shared_blocks_are_ref_counted() -> None:
    cache = KVCache(num_blocks=16, block_size=4)
    allocate_prompt(cache, "a", list(range(9)))
    allocate_prompt(cache, "b", list(range(9)))
    a, b = cache.block_ids("a"), cache.block_ids("b")
    assert a[:2] == b[:2] and a[2] != b[2]
    assert [cache.blocks[i].ref_cnt for i in a] == [2, 2, 1]
    cache.free("a")
    assert [cache.blocks[i].ref_cnt for i in b] == [1, 1, 1]
    assert a[0] not in cache.free_queue_ids()
    assert cache.num_free_blocks == 15 - 3


def test_usage_excludes_the_null_block() -> None:
    cache = KVCache(num_blocks=5, block_size=4)
    assert cache.usage == 0.0
    allocate_prompt(cache, "a", list(range(8)))
    assert cache.usage == 0.5
    cache.free("a")
    assert cache.usage == 0.0


def test_freed_blocks_keep_their_hash_and_lru_evicts_tail_first() -> None:
    cache = KVCache(num_blocks=5, block_size=4)  # 4 usable blocks: 1..4
    a = allocate_prompt(cache, "a", list(range(8)))  # blocks 1, 2
    cache.free("a")
    # Unused blocks first, then a's tail (2), then a's head (1).
    assert cache.free_queue_ids() == (3, 4, 2, 1)
    assert cache.is_cached(a[0]) and cache.is_cached(a[1])
    allocate_prompt(cache, "b", [50 + i for i in range(12)])  # needs 3 blocks: 3, 4, 2
    assert cache.block_ids("b") == (3, 4, 2)
    assert not cache.is_cached(a[1])
    assert cache.is_cached(a[0])
    assert cache.find_cached_prefix(hashes_of(list(range(9)), 4), 9).num_tokens == 4


def test_a_hit_takes_the_block_out_of_the_free_queue() -> None:
    cache = KVCache(num_blocks=5, block_size=4)
    allocate_prompt(cache, "a", list(range(8)))
    cache.free("a")
    allocate_prompt(cache, "b", list(range(9)))  # hits blocks 1, 2; one new block
    assert cache.block_ids("b") == (1, 2, 3)
    assert cache.free_queue_ids() == (4,)


def test_allocation_that_does_not_fit_changes_nothing() -> None:
    cache = KVCache(num_blocks=3, block_size=4)  # 2 usable blocks
    hashes = hashes_of(list(range(12)), 4)
    assert not cache.allocate("a", hashes, 12, 12)
    assert cache.num_free_blocks == 2
    assert cache.block_ids("a") == ()


def test_evictable_hit_blocks_count_against_free_space() -> None:
    cache = KVCache(num_blocks=4, block_size=4)  # 3 usable
    allocate_prompt(cache, "a", list(range(8)))  # blocks 1, 2 cached
    cache.free("a")
    hashes = hashes_of(list(range(16)), 4)
    hit = cache.find_cached_prefix(hashes, 16)
    assert hit.num_tokens == 8
    # 16 tokens = 4 blocks: 2 hit (both in the free queue) + 2 new > 3 free - 2 evictable.
    assert not cache.allocate("b", hashes, 16, 16, hit)
    assert cache.num_free_blocks == 3


def test_decode_tokens_fill_and_cache_blocks() -> None:
    cache = KVCache(num_blocks=8, block_size=4)
    tokens = list(range(7))
    hashes = allocate_prompt(cache, "a", tokens)
    tokens.append(7)
    extend_block_hashes(hashes, tokens, 4)
    assert cache.allocate("a", hashes, 8, 8)
    assert cache.is_cached(hashes[1])
    assert cache.block_ids("a") == (1, 2)
