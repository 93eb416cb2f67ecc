"""The LoRA replay: the gateway's residency rules hold and the routers differ as expected."""

from __future__ import annotations

from benchmarks.lora.replay import replay
from benchmarks.lora.run import BLIND, OURS, RAY


def test_adapter_aware_routing_loads_far_less_than_adapter_blind() -> None:
    ours = replay(OURS, 64.0, requests=600)
    blind = replay(BLIND, 64.0, requests=600)
    assert len(ours.ttft_s) == len(blind.ttft_s) == 600
    assert ours.hits / 600 > 0.85 > blind.hits / 600
    assert ours.loads < blind.loads / 4
    assert ours.hits + ours.loads == 600  # every request was a hit or caused one load


def test_ray_rule_piles_the_hot_adapter_on_its_holder() -> None:
    ray = replay(RAY, 64.0, requests=600)
    ours = replay(OURS, 64.0, requests=600)
    assert ray.max_over_mean > 1.6 > 1.4 > ours.max_over_mean
