from __future__ import annotations

import hashlib

import pytest

from routing.block_hash import block_hashes
from routing.kv_cache_view import BlockSizeMismatch, ClusterCacheView

BS = 4


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def engine_hashes(tokens: list[int], salt: str = "") -> list[bytes]:
    """An engine's own chain (any function will do: the view re-keys from tokens)."""
    out: list[bytes] = []
    parent = salt.encode()
    for start in range(0, len(tokens) - len(tokens) % BS, BS):
        parent = hashlib.sha256(parent + repr(tokens[start:start + BS]).encode()).digest()
        out.append(parent)
    return out


def prompt(*blocks: int) -> list[int]:
    return [b for b in blocks for _ in range(BS)]


def view(**kwargs: object) -> ClusterCacheView:
    v = ClusterCacheView(BS, **kwargs)  # type: ignore[arg-type]
    for rid in ("r0", "r1"):
        v.set_live(rid, True)
    return v


def test_stored_blocks_match_the_routers_hashes_of_the_same_tokens() -> None:
    v = view()
    tokens = prompt(1, 2, 3)
    assert v.store("r0", "m", None, engine_hashes(tokens), tokens, BS) == 3
    assert v.match("m", block_hashes(prompt(1, 2, 3, 4), BS)) == {"r0": 3}
    assert v.match("m", block_hashes(prompt(1, 9), BS)) == {"r0": 1}
    assert v.match("m", block_hashes(prompt(5), BS)) == {}
    assert v.match("other-model", block_hashes(tokens, BS)) == {}
    assert v.held_blocks("r0") == 3


def test_a_store_chained_on_an_earlier_block_continues_its_prefix() -> None:
    v = view()
    tokens = prompt(1, 2, 3, 4)
    hashes = engine_hashes(tokens)
    v.store("r1", "m", None, hashes[:2], tokens[:2 * BS], BS)
    v.store("r1", "m", hashes[1], hashes[2:], tokens[2 * BS:], BS)
    assert v.match("m", block_hashes(tokens, BS)) == {"r1": 4}


def test_a_block_whose_parent_was_never_seen_is_skipped_and_counted() -> None:
    v = view()
    tokens = prompt(1, 2)
    hashes = engine_hashes(tokens)
    assert v.store("r0", "m", hashes[0], hashes[1:], tokens[BS:], BS) == 0
    assert v.counters.unknown_parent == 1
    assert v.held_blocks("r0") == 0


def test_removed_blocks_stop_matching_from_that_block_on() -> None:
    v = view()
    tokens = prompt(1, 2, 3)
    hashes = engine_hashes(tokens)
    v.store("r0", "m", None, hashes, tokens, BS)
    v.store("r1", "m", None, hashes[:1], tokens[:BS], BS)
    v.remove("r0", [hashes[1]])
    assert v.match("m", block_hashes(tokens, BS)) == {"r0": 1, "r1": 1}
    v.remove("r0", [hashes[0]])
    assert v.match("m", block_hashes(tokens, BS)) == {"r1": 1}
    assert v.held_blocks("r0") == 1  # the tail block is still cached, unreachable


def test_two_copies_of_a_block_need_two_removals() -> None:
    v = view()
    tokens = prompt(1)
    hashes = engine_hashes(tokens)
    v.store("r0", "m", None, hashes, tokens, BS)
    v.store("r0", "m", None, hashes, tokens, BS)
    v.remove("r0", hashes)
    assert v.match("m", block_hashes(tokens, BS)) == {"r0": 1}
    v.remove("r0", hashes)
    assert v.match("m", block_hashes(tokens, BS)) == {}


def test_clear_and_loss_of_liveness_empty_a_replica() -> None:
    v = view()
    tokens = prompt(1, 2)
    v.store("r0", "m", None, engine_hashes(tokens), tokens, BS)
    v.store("r1", "m", None, engine_hashes(tokens), tokens, BS)
    v.clear("r0")
    assert v.match("m", block_hashes(tokens, BS)) == {"r1": 2}
    assert v.held_blocks("r0") == 0
    v.set_live("r1", False)
    assert v.match("m", block_hashes(tokens, BS)) == {}
    assert not v.is_live("r1") and v.is_live("r0")


def test_adapters_are_separate_index_keys() -> None:
    v = view()
    tokens = prompt(1, 2)
    v.store("r0", "m\x00sql", None, engine_hashes(tokens, "sql"), tokens, BS)
    assert v.match("m", block_hashes(tokens, BS)) == {}
    assert v.match("m\x00sql", block_hashes(tokens, BS)) == {"r0": 2}


def test_a_different_block_size_is_refused() -> None:
    v = view()
    tokens = prompt(1, 2)
    with pytest.raises(BlockSizeMismatch):
        v.store("r0", "m", None, engine_hashes(tokens), tokens, 2 * BS)


def test_partial_tail_tokens_are_not_keyed() -> None:
    v = view()
    tokens = [*prompt(1, 2), 7, 7]
    assert v.store("r0", "m", None, engine_hashes(tokens), tokens, BS) == 2


def test_recent_evictions_decay_with_the_half_life() -> None:
    clock = FakeClock()
    v = view(clock=clock, eviction_half_life_s=10.0)
    tokens = prompt(1, 2, 3, 4)
    hashes = engine_hashes(tokens)
    v.store("r0", "m", None, hashes, tokens, BS)
    v.remove("r0", hashes)
    assert v.recent_evictions("r0") == pytest.approx(4.0)
    clock.now_s = 10.0
    assert v.recent_evictions("r0") == pytest.approx(2.0)
    assert v.pressure("r0") == pytest.approx(2.0)
    assert v.pressure("r1") == 0.0


def test_memory_is_bounded_per_replica() -> None:
    v = view(max_blocks_per_replica=8)
    tokens = prompt(*range(20))
    v.store("r0", "m", None, engine_hashes(tokens), tokens, BS)
    assert v.held_blocks("r0") == 0
    assert v.counters.overflows == 1
    assert v.match("m", block_hashes(tokens, BS)) == {}


def test_departed_replicas_free_their_bit() -> None:
    v = view()
    tokens = prompt(1)
    v.store("r0", "m", None, engine_hashes(tokens), tokens, BS)
    v.retain_replicas(["r1"])
    v.set_live("r2", True)
    v.store("r2", "m", None, engine_hashes(tokens), tokens, BS)
    assert v.match("m", block_hashes(tokens, BS)) == {"r2": 1}
