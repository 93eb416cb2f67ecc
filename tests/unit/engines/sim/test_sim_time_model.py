from __future__ import annotations

import pytest

from engines.sim.profiles import PROFILES, get_profile
from engines.sim.time_model import (
    SeqChunk,
    decode_step_time_s,
    kv_transfer_time_s,
    prefill_time_s,
    step_flops,
    step_time_s,
)

H100_FLOPS = 989.4e12
H100_BW = 3.35e12


def test_kv_bytes_per_token_match_the_published_configs() -> None:
    assert get_profile("llama-3.1-8b-h100").model.kv_bytes_per_token == 131_072
    assert get_profile("llama-3.1-70b-tp4-h100").model.kv_bytes_per_token == 327_680


def test_8b_decode_step_is_memory_bound() -> None:
    profile = get_profile("llama-3.1-8b-h100")
    expected = 0.002 + (8.03e9 * 2 + 131_072 * 1001) / (H100_BW * 0.75)
    assert decode_step_time_s(profile, 1, 1000) == pytest.approx(expected, rel=1e-12)
    assert decode_step_time_s(profile, 1, 1000) == pytest.approx(0.00845, abs=1e-4)


def test_8b_prefill_is_compute_bound_with_a_quadratic_term() -> None:
    profile = get_profile("llama-3.1-8b-h100")
    n = 2048
    flops = 2 * 8.03e9 * n + 4 * 32 * 4096 * (n * (n + 1) / 2)
    expected = 0.002 + flops / (H100_FLOPS * 0.5)
    assert prefill_time_s(profile, n) == pytest.approx(expected, rel=1e-12)
    # Cached tokens are not recomputed, but new tokens still attend to them.
    flops_cached = 2 * 8.03e9 * 1024 + 4 * 32 * 4096 * (1024 * 1024 + 1024 * 1025 / 2)
    assert prefill_time_s(profile, n, num_cached_tokens=1024) == pytest.approx(
        0.002 + flops_cached / (H100_FLOPS * 0.5), rel=1e-12
    )


def test_70b_tp4_scales_compute_and_bandwidth_by_four() -> None:
    profile = get_profile("llama-3.1-70b-tp4-h100")
    expected = 0.004 + (70.6e9 * 2 + 327_680 * 8 * 513) / (4 * H100_BW * 0.7)
    assert decode_step_time_s(profile, 8, 8 * 512) == pytest.approx(expected, rel=1e-12)


def test_decode_step_grows_with_batch_and_context() -> None:
    profile = get_profile("llama-3.1-8b-h100")
    assert decode_step_time_s(profile, 64, 64_000) > decode_step_time_s(profile, 1, 1000)
    assert decode_step_time_s(profile, 0, 0) == 0.0
    assert step_time_s(profile, []) == 0.0


def test_kv_transfer_time_by_bytes() -> None:
    profile = get_profile("llama-3.1-8b-h100")
    assert kv_transfer_time_s(profile, 1000) == pytest.approx(0.001 + 131_072_000 / 50e9)
    assert kv_transfer_time_s(profile, 0) == 0.0


def test_tiny_profile_exact_step() -> None:
    profile = get_profile("tiny-cpu")
    chunks = [SeqChunk(10, 0)]
    assert step_flops(profile, chunks) == 2 * 1e6 * 10 + 4 * 2 * 64 * 55
    # KV per token: 2 * 2 layers * 2 heads * 32 dim * 2 B = 512 B.
    # memory (2e6 + 512 * 10) / 1e11 = 20.0512 us > compute 20,028,160 / 1e12 = 20.02816 us.
    assert profile.model.kv_bytes_per_token == 512
    assert step_time_s(profile, chunks) == pytest.approx(0.001 + 20.0512e-6, rel=1e-12)
    assert step_time_s(profile, chunks, lora_loads=2) == pytest.approx(
        0.001 + 20.0512e-6 + 2 * 0.005, rel=1e-12
    )


def test_profiles_are_registered() -> None:
    assert {"tiny-cpu", "llama-3.1-8b-h100", "llama-3.1-70b-tp4-h100"} <= set(PROFILES)
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("nope")
