"""How long a step, a prefill or a KV transfer takes under a profile (roofline model)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engines.sim.profiles import Profile


@dataclass(frozen=True)
class SeqChunk:
    """One sequence's share of a step: new tokens computed on top of cached context."""

    num_new_tokens: int
    num_context_tokens: int


def step_flops(profile: Profile, chunks: Sequence[SeqChunk]) -> float:
    """Linear layers (2 FLOPs per parameter per token) plus causal attention.

    New token ``k`` of a chunk attends to ``context + k + 1`` keys; QK^T and AV
    cost ``2 * hidden`` FLOPs each per (query, key) pair per layer.
    """
    model = profile.model
    num_new = sum(chunk.num_new_tokens for chunk in chunks)
    pairs = sum(
        chunk.num_new_tokens * chunk.num_context_tokens
        + chunk.num_new_tokens * (chunk.num_new_tokens + 1) / 2
        for chunk in chunks
    )
    return 2 * model.num_params * num_new + 4 * model.num_layers * model.hidden_size * pairs


def step_bytes(profile: Profile, chunks: Sequence[SeqChunk]) -> float:
    """Weights read once per step plus every sequence's KV (context read, new written)."""
    kv_tokens = sum(chunk.num_context_tokens + chunk.num_new_tokens for chunk in chunks)
    return profile.model.weight_bytes + profile.model.kv_bytes_per_token * kv_tokens


def step_time_s(profile: Profile, chunks: Sequence[SeqChunk], lora_loads: int = 0) -> float:
    """Overhead + max(compute, memory) + adapter loads; 0 for an empty step."""
    if not chunks:
        return 0.0
    compute_s = step_flops(profile, chunks) / profile.usable_flops
    memory_s = step_bytes(profile, chunks) / profile.usable_bytes_per_s
    return profile.step_overhead_s + max(compute_s, memory_s) + lora_loads * profile.lora_load_s


def prefill_time_s(profile: Profile, num_prompt_tokens: int, num_cached_tokens: int = 0) -> float:
    """One request's prefill as a single step (cached tokens cost only their KV read)."""
    uncached = num_prompt_tokens - num_cached_tokens
    return step_time_s(profile, [SeqChunk(uncached, num_cached_tokens)])


def decode_step_time_s(profile: Profile, batch_size: int, num_context_tokens: int) -> float:
    """One decode step for ``batch_size`` sequences holding ``num_context_tokens`` in total."""
    if batch_size == 0:
        return 0.0
    base, extra = divmod(num_context_tokens, batch_size)
    chunks = [SeqChunk(1, base + (1 if i < extra else 0)) for i in range(batch_size)]
    return step_time_s(profile, chunks)


def kv_transfer_bytes(profile: Profile, num_tokens: int) -> int:
    return profile.model.kv_bytes_per_token * num_tokens


def kv_transfer_time_s(profile: Profile, num_tokens: int) -> float:
    """Pulling ``num_tokens`` of KV from a prefill engine: latency + bytes / link bandwidth."""
    if num_tokens <= 0:
        return 0.0
    num_bytes = kv_transfer_bytes(profile, num_tokens)
    return profile.hardware.kv_link_latency_s + num_bytes / profile.kv_link_bytes_per_s
