"""Deterministic "generated" tokens: a function of the prompt, the seed and the choice index."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

MIN_NATURAL_TOKENS = 16
MAX_NATURAL_TOKENS = 256


def _rng(prompt_token_ids: Sequence[int], seed: int | None, choice_index: int) -> random.Random:
    digest = hashlib.sha256()
    digest.update(repr((tuple(prompt_token_ids), seed, choice_index)).encode())
    return random.Random(digest.digest())


def natural_length(
    prompt_token_ids: Sequence[int], seed: int | None = None, choice_index: int = 0
) -> int:
    """How many tokens the "model" emits before its EOS when nothing else stops it."""
    rng = _rng(prompt_token_ids, seed, choice_index)
    return rng.randint(MIN_NATURAL_TOKENS, MAX_NATURAL_TOKENS)


def output_plan(
    prompt_token_ids: Sequence[int],
    vocabulary: Sequence[int],
    max_tokens: int,
    eos_token_id: int | None,
    ignore_eos: bool = False,
    seed: int | None = None,
    choice_index: int = 0,
) -> tuple[int, ...]:
    """The tokens a request will sample, in order; ends with EOS when the model "stops"."""
    if not vocabulary:
        raise ValueError("empty vocabulary")
    rng = _rng(prompt_token_ids, seed, choice_index)
    natural = rng.randint(MIN_NATURAL_TOKENS, MAX_NATURAL_TOKENS)
    stops = eos_token_id is not None and not ignore_eos and natural < max_tokens
    length = natural if stops else max(1, max_tokens)
    words = tuple(rng.choice(vocabulary) for _ in range(length))
    if stops and eos_token_id is not None:
        return (*words, eos_token_id)
    return words
