"""Chained block hashes of a prompt, block by block, as vLLM's prefix cache keys them.

vLLM hashes only full blocks of ``block_size`` tokens; block ``i``'s hash is
``hash_fn((hash of block i-1, or NONE_HASH for the first, tuple(block tokens),
extra_keys))``, so one hash names the whole prefix up to and including its block and two
prompts share their first ``k`` block hashes exactly when they share their first
``k * block_size`` tokens. :func:`block_hashes` computes the same chain; by default with
Python's own ``hash`` of the tuple (fast, stable within a process, all the router needs),
or with any ``hash_fn``/``root``, e.g. vLLM's ``sha256_cbor`` and ``NONE_HASH`` to get
byte-identical keys (see ``tests/unit/routing/test_block_hash_vllm.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

BlockHash = Hashable
HashFn = Callable[[Any], Hashable]

ROOT_HASH = 0x6C6C6D7365727665  # "llmserve": the parent of every first block


def block_hashes(token_ids: Sequence[int], block_size: int, *, hash_fn: HashFn | None = None,
                 root: Hashable = ROOT_HASH, extra_keys: Any = None,
                 cache_salt: str | None = None) -> list[BlockHash]:
    """The chained hash of every full block of ``token_ids``; with ``cache_salt``, the
    first block's extra keys end with ``("cache_salt", salt)`` as vLLM's do."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    tokens = tuple(token_ids)
    end = len(tokens) - len(tokens) % block_size
    parent: Hashable = root
    out: list[BlockHash] = []
    if cache_salt and end:
        first = salted_extra_keys(extra_keys, cache_salt)
        parent = (hash_fn or hash)((parent, tokens[:block_size], first))
        out.append(parent)
        tokens, end = tokens[block_size:], end - block_size
    if hash_fn is None:
        for start in range(0, end, block_size):
            parent = hash((parent, tokens[start:start + block_size], extra_keys))
            out.append(parent)
        return out
    for start in range(0, end, block_size):
        parent = hash_fn((parent, tokens[start:start + block_size], extra_keys))
        out.append(parent)
    return out


def salted_extra_keys(extra_keys: Any, cache_salt: str) -> tuple[Any, ...]:
    """A first block's extra keys with the request's salt (after LoRA and multimodal keys,
    as ``vllm.v1.core.kv_cache_utils.generate_block_hash_extra_keys`` orders them)."""
    return (*(extra_keys or ()), ("cache_salt", cache_salt))


def text_token_ids(text: str) -> list[int]:
    """The fallback when no tokenizer is available: one 'token' per character."""
    return [ord(ch) for ch in text]
