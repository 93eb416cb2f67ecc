from __future__ import annotations

from llmserve.serve.autoscaling import (
    AutoscalingContext,
    AutoscalingState,
    MetricWindow,
    default_autoscaling_policy,
    desired_replicas,
)
from llmserve.serve.config import AutoscalingConfig

CFG = AutoscalingConfig(min_replicas=1, max_replicas=10, target_ongoing_requests=2,
                        upscale_delay_s=30, downscale_delay_s=600)


def ctx(current: int, ongoing: float, now: float, cfg: AutoscalingConfig = CFG,
        queued: int = 0) -> AutoscalingContext:
    return AutoscalingContext(cfg, current, current, ongoing, queued, now)


def test_desired_replicas_targets_ongoing_per_replica() -> None:
    assert desired_replicas(ctx(2, 8, 0)) == 4
    assert desired_replicas(ctx(4, 2, 0)) == 1
    assert desired_replicas(ctx(3, 6, 0)) == 3


def test_scaling_factors_damp_the_step() -> None:
    cfg = AutoscalingConfig(min_replicas=1, max_replicas=100, target_ongoing_requests=1,
                            upscaling_factor=0.5, downscaling_factor=0.5)
    assert desired_replicas(ctx(2, 10, 0, cfg)) == 6  # 2 + (10-2)*0.5
    assert desired_replicas(ctx(10, 2, 0, cfg)) == 6  # 10 - (10-2)*0.5


def test_upscale_waits_for_the_delay_then_applies() -> None:
    replicas, state = default_autoscaling_policy(ctx(1, 8, 100.0), None)
    assert (replicas, state) == (1, AutoscalingState(upscale_since_s=100.0))
    replicas, state = default_autoscaling_policy(ctx(1, 8, 129.9), state)
    assert replicas == 1
    replicas, state = default_autoscaling_policy(ctx(1, 8, 130.0), state)
    assert (replicas, state) == (4, AutoscalingState())


def test_a_calm_tick_resets_the_upscale_timer() -> None:
    _, state = default_autoscaling_policy(ctx(1, 8, 0.0), None)
    _, state = default_autoscaling_policy(ctx(1, 2, 10.0), state)
    assert state == AutoscalingState()
    replicas, state = default_autoscaling_policy(ctx(1, 8, 35.0), state)
    assert replicas == 1 and state.upscale_since_s == 35.0


def test_downscale_waits_for_its_own_delay_and_respects_min() -> None:
    replicas, state = default_autoscaling_policy(ctx(5, 0, 0.0), None)
    assert replicas == 5 and state.downscale_since_s == 0.0
    replicas, _ = default_autoscaling_policy(ctx(5, 0, 600.0), state)
    assert replicas == 1


def test_max_replicas_caps_upscale() -> None:
    cfg = AutoscalingConfig(min_replicas=1, max_replicas=3, upscale_delay_s=0)
    assert default_autoscaling_policy(ctx(1, 100, 0.0, cfg), None)[0] == 3


def test_scale_from_zero_is_immediate_when_requests_queue() -> None:
    cfg = AutoscalingConfig(min_replicas=0, max_replicas=4, upscale_delay_s=60)
    assert default_autoscaling_policy(ctx(0, 0, 5.0, cfg, queued=1), None)[0] == 1
    assert default_autoscaling_policy(ctx(0, 0, 5.0, cfg, queued=0), None)[0] == 0


def test_scale_to_zero_after_downscale_delay() -> None:
    cfg = AutoscalingConfig(min_replicas=0, max_replicas=4, downscale_delay_s=10)
    replicas, state = default_autoscaling_policy(ctx(1, 0, 0.0, cfg), None)
    assert replicas == 1
    assert default_autoscaling_policy(ctx(1, 0, 10.0, cfg), state)[0] == 0


def test_metric_window_averages_over_look_back() -> None:
    window = MetricWindow(look_back_s=10)
    window.add(0.0, 10)
    window.add(5.0, 20)
    assert window.mean() == 15
    window.add(12.0, 30)  # the sample at t=0 falls out of the window
    assert window.mean() == 25
