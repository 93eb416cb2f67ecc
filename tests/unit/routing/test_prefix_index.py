from __future__ import annotations

import pytest

from routing.block_hash import block_hashes, text_token_ids
from routing.prefix_index import ENTRY_BYTES, PrefixIndex


def prompt(*blocks: int, block_size: int = 4) -> list[int]:
    """Tokens made of whole blocks; block ``b`` is ``[b] * block_size``."""
    return [b for b in blocks for _ in range(block_size)]


def hashes(*blocks: int) -> list[object]:
    return block_hashes(prompt(*blocks), 4)


def test_only_full_blocks_are_hashed_and_a_hash_names_its_whole_prefix() -> None:
    assert block_hashes(list(range(11)), 4) == block_hashes(list(range(8)), 4)
    assert len(block_hashes(list(range(11)), 4)) == 2
    a, b = hashes(1, 2, 3), hashes(1, 2, 4)
    assert a[:2] == b[:2] and a[2] != b[2]
    assert hashes(9, 2)[1] != hashes(1, 2)[1]  # same block, other parent
    with pytest.raises(ValueError):
        block_hashes([1], 0)


def test_custom_hash_function_builds_the_same_chain() -> None:
    seen: list[object] = []

    def record(payload: object) -> int:
        seen.append(payload)
        return len(seen)

    assert block_hashes([5, 5, 6, 6], 2, hash_fn=record, root="R") == [1, 2]
    assert seen == [("R", (5, 5), None), (1, (6, 6), None)]


def test_match_gives_each_replica_its_leading_blocks() -> None:
    index = PrefixIndex()
    index.insert(hashes(1, 2, 3), "a")
    index.insert(hashes(1, 2), "b")
    index.insert(hashes(1, 7), "c")
    index.insert(hashes(8), "d")
    assert index.match(hashes(1, 2, 3, 4)) == {"a": 3, "b": 2, "c": 1}
    assert index.match(hashes(1, 7)) == {"a": 1, "b": 1, "c": 2}
    assert index.match(hashes(5)) == {}
    assert index.match([]) == {}


def test_lru_eviction_under_the_byte_cap_removes_leaves_first() -> None:
    index = PrefixIndex(max_bytes=4 * ENTRY_BYTES)
    index.insert(hashes(1, 2, 3), "a")
    index.insert(hashes(5), "b")  # 4 entries: at the cap
    assert len(index) == 4 and index.evicted_blocks == 0
    index.insert(hashes(6), "b")  # evicts the oldest: the leaf of 1-2-3
    assert index.evicted_blocks == 1 and index.estimated_bytes == 4 * ENTRY_BYTES
    assert index.match(hashes(1, 2, 3)) == {"a": 2}
    assert index.cached_blocks("a") == 2 and index.cached_blocks("b") == 2
    index.insert(hashes(1, 2), "a")  # touching a prefix makes it recent again
    index.insert(hashes(7), "c")
    assert index.match(hashes(5)) == {} and index.match(hashes(1, 2)) == {"a": 2}


def test_removing_a_replica_drops_its_entries_and_reuses_its_bit() -> None:
    index = PrefixIndex()
    index.insert(hashes(1, 2), "a")
    index.insert(hashes(1), "b")
    index.retain_replicas(["b"])
    assert index.match(hashes(1, 2)) == {"b": 1}
    assert len(index) == 1 and index.replica_ids == ["b"]
    index.insert(hashes(1, 2), "c")  # takes a's freed bit without inheriting a's blocks
    assert index.match(hashes(1, 2)) == {"b": 1, "c": 2}
    index.remove_replica("nobody")


def test_text_fallback_uses_characters() -> None:
    assert text_token_ids("ab") == [97, 98]
