"""Per-key request and token rates on an injected clock."""

from __future__ import annotations

import pytest

from llmserve.openai.errors import TooManyRequests
from llmserve.openai.key_policy import KeyPolicy
from llmserve.openai.rate_limit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_requests_per_minute_refill_continuously() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = KeyPolicy(b"a" * 32, "a", requests_per_minute=2)
    limiter.admit(key)
    limiter.admit(key)
    with pytest.raises(TooManyRequests) as refused:
        limiter.admit(key)
    assert refused.value.retry_after_s == pytest.approx(30.0)
    clock.now_s += 30.0  # one request's worth refilled
    limiter.admit(key)
    with pytest.raises(TooManyRequests):
        limiter.admit(key)


def test_tokens_are_charged_after_use_and_other_keys_are_apart() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = KeyPolicy(b"b" * 32, "b", tokens_per_minute=600)
    other = KeyPolicy(b"c" * 32, "c", tokens_per_minute=600)
    limiter.admit(key)
    limiter.charge_tokens(key, 900)  # one request may overdraw
    with pytest.raises(TooManyRequests) as refused:
        limiter.admit(key)
    assert refused.value.retry_after_s == pytest.approx(30.1)  # above zero again by then
    limiter.admit(other)
    clock.now_s += 30.1
    limiter.admit(key)


def test_a_key_without_limits_is_never_refused() -> None:
    limiter = RateLimiter(Clock())
    key = KeyPolicy(b"d" * 32, "d")
    for _ in range(1000):
        limiter.admit(key)
