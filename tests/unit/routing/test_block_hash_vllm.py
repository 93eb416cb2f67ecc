"""The router's block hashes against vLLM's own prefix-cache hashing of the same tokens."""

from __future__ import annotations

import random

import pytest

from routing.block_hash import block_hashes
from routing.prefix_index import PrefixIndex
from tests.fixtures_engines import vllm_installed

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not vllm_installed(), reason="vLLM is not installed"),
]


def vllm_request_hashes(tokens: list[int], block_size: int) -> list[bytes]:
    """What vLLM's scheduler computes for a request (its block hasher on a real Request)."""
    from vllm import SamplingParams
    from vllm.utils.hashing import sha256_cbor
    from vllm.v1.core import kv_cache_utils
    from vllm.v1.request import Request

    kv_cache_utils.init_none_hash(sha256_cbor)
    hasher = kv_cache_utils.get_request_block_hasher(block_size, sha256_cbor)
    request = Request("r", tokens, SamplingParams(max_tokens=1), None, block_hasher=hasher)
    return [bytes(h) for h in request.block_hashes]


@pytest.mark.parametrize("block_size,length", [(16, 100), (32, 64), (16, 15)])
def test_same_chain_as_vllm_with_vllms_hash_function(block_size: int, length: int) -> None:
    from vllm.utils.hashing import sha256_cbor
    from vllm.v1.core import kv_cache_utils

    tokens = [random.Random(length).randrange(32_000) for _ in range(length)]
    expected = vllm_request_hashes(tokens, block_size)
    ours = block_hashes(tokens, block_size, hash_fn=sha256_cbor,
                        root=kv_cache_utils.NONE_HASH)
    assert len(expected) == length // block_size
    assert [bytes(h) for h in ours] == expected  # type: ignore[arg-type]


def test_fast_hash_matches_exactly_the_blocks_vllm_would_hit() -> None:
    """Index prompts with the default fast hash and with vLLM's hashes: same match lengths."""
    rng = random.Random(1)
    block_size = 16
    stems = [[rng.randrange(1000) for _ in range(rng.randrange(0, 80))] for _ in range(6)]
    prompts = [stem + [rng.randrange(1000) for _ in range(rng.randrange(0, 60))]
               for stem in stems for _ in range(3)]
    fast, exact = PrefixIndex(), PrefixIndex()
    for i, prompt in enumerate(prompts[::2]):
        fast.insert(block_hashes(prompt, block_size), f"r{i}")
        exact.insert(vllm_request_hashes(prompt, block_size), f"r{i}")
    for prompt in prompts:
        from_vllm = exact.match(vllm_request_hashes(prompt, block_size))
        assert fast.match(block_hashes(prompt, block_size)) == from_vllm
    assert any(from_vllm for from_vllm in (exact.match(vllm_request_hashes(p, block_size))
                                           for p in prompts[1::2]))
