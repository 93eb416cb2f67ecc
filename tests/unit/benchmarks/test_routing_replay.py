"""The routing replay counts cold prefills and load as the policies' rules imply."""

from __future__ import annotations

from benchmarks.routing.replay import replay


def test_pinning_every_group_pays_one_cold_prefill_per_group_and_piles_up_the_hot_one() -> None:
    # no balance at all: every group stays where it started
    cold, imbalance = replay({"policy": "prefix_aware", "balance_abs_threshold": 10_000,
                              "share_window": 0}, seed=0, n=256, groups=16)
    assert cold == 16
    assert imbalance >= 3.0  # half the traffic on one of 8 replicas (+ its cold groups)


def test_prefix_aware_keeps_within_the_bound_with_few_cold_prefills() -> None:
    for seed in range(3):
        cold, imbalance = replay({"policy": "prefix_aware"}, seed=seed)
        random_cold, _ = replay({"policy": "power_of_two"}, seed=seed)
        assert imbalance <= 1.5
        assert 16 < cold <= 24  # the hot group needs >= 3 replicas; oracle: 18-20
        assert random_cold > 3 * cold
