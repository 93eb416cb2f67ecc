"""Deterministic "generated" tokens: a function of the prompt, the seed, the choice index and
the LoRA adapter (by name: an adapter "changes the model", the same adapter answers alike
on every replica)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

MIN_NATURAL_TOKENS = 16
MAX_NATURAL_TOKENS = 256


def _rng(
    prompt_token_ids: Sequence[int], seed: int | None, choice_index: int, lora_name: str | None
) -> random.Random:
    digest = hashlib.sha256()
    digest.update(repr((tuple(prompt_token_ids), seed, choice_index)).encode())
    if lora_name is not None:  # the base model's outputs stay as they were
        digest.update(f"lora:{lora_name}".encode())
    return random.Random(digest.digest())


def natural_length(
    prompt_token_ids: Sequence[int], seed: int | None = None, choice_index: int = 0
) -> int:
    """How many tokens the "model" emits before its EOS when nothing else stops it."""
    rng = _rng(prompt_token_ids, seed, choice_index, None)
    return rng.randint(MIN_NATURAL_TOKENS, MAX_NATURAL_TOKENS)


def output_plan(
    prompt_token_ids: Sequence[int],
    vocabulary: Sequence[int],
    max_tokens: int,
    eos_token_id: int | None,
    ignore_eos: bool = False,
    seed: int | None = None,
    choice_index: int = 0,
    lora_name: str | None = None,
) -> tuple[int, ...]:
    """The tokens a request will sample, in order; ends with EOS when the model "stops"."""
    if not vocabulary:
        raise ValueError("empty vocabulary")
    rng = _rng(prompt_token_ids, seed, choice_index, lora_name)
    natural = rng.randint(MIN_NATURAL_TOKENS, MAX_NATURAL_TOKENS)
    stops = eos_token_id is not None and not ignore_eos and natural < max_tokens
    length = natural if stops else max(1, max_tokens)
    words = tuple(rng.choice(vocabulary) for _ in range(length))
    if stops and eos_token_id is not None:
        return (*words, eos_token_id)
    return words
