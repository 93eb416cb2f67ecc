"""Per-key request and token rates on an injected clock."""

from __future__ import annotations

import contextlib

import pytest

from llmserve.openai.errors import TooManyRequests
from llmserve.openai.key_policy import KeyPolicy
from llmserve.openai.rate_limit import DEFAULT_COMPLETION_ESTIMATE, RateLimiter, token_estimate


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


def test_tokens_are_held_at_admission_and_settled_at_the_end() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = KeyPolicy(b"b" * 32, "b", tokens_per_minute=600)
    other = KeyPolicy(b"c" * 32, "c", tokens_per_minute=600)
    first = limiter.admit(key, 250)
    second = limiter.admit(key, 250)
    with pytest.raises(TooManyRequests) as refused:  # 100 left, 250 needed
        limiter.admit(key, 250)
    assert refused.value.retry_after_s == pytest.approx(15.0)  # 150 more tokens' refill
    limiter.admit(other, 250)  # other keys are apart
    limiter.settle(first, 50)  # used less than held: 200 back
    limiter.settle(first, 0)  # once only
    third = limiter.admit(key, 250)
    assert third is not None
    limiter.settle(second, None)  # unknown: stays charged its estimate
    limiter.settle(third, 250)
    with pytest.raises(TooManyRequests):
        limiter.admit(key, 100)  # 50 left
    clock.now_s += 5.0  # 50 more
    limiter.admit(key, 100)


def test_concurrent_requests_cannot_together_exceed_the_budget() -> None:
    limiter = RateLimiter(Clock())
    key = KeyPolicy(b"e" * 32, "e", tokens_per_minute=1000)
    admitted = []
    for _ in range(10):  # ten at once, each may use up to 220 tokens
        with contextlib.suppress(TooManyRequests):
            admitted.append(limiter.admit(key, 220))
    assert len(admitted) == 4  # 4 x 220 <= 1000 < 5 x 220
    for hold in admitted:
        limiter.settle(hold, 200)  # each used a little less than it held
    limiter.admit(key, 200)  # 1000 - 800 left
    with pytest.raises(TooManyRequests):
        limiter.admit(key, 1)


def test_an_estimate_over_the_whole_budget_waits_for_a_full_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = KeyPolicy(b"f" * 32, "f", tokens_per_minute=10)
    hold = limiter.admit(key, 500)  # capped at the budget: admitted when the bucket is full
    with pytest.raises(TooManyRequests):
        limiter.admit(key, 1)
    limiter.settle(hold, 500)  # overdrawn by what it used beyond the budget
    clock.now_s += 60.0
    with pytest.raises(TooManyRequests):
        limiter.admit(key, 1)


def test_token_estimate() -> None:
    assert token_estimate("/v1/completions", {"max_tokens": 10}, 40) == 10 + 10
    assert token_estimate("/v1/chat/completions", {"max_completion_tokens": 7,
                                                   "max_tokens": 99}, 41) == 11 + 7
    assert token_estimate("/v1/completions", {"max_tokens": 10, "n": 3}, 4) == 1 + 30
    assert token_estimate("/v1/completions", {}, 8) == 2 + DEFAULT_COMPLETION_ESTIMATE
    assert token_estimate("/v1/completions", {"max_tokens": True}, 0) == \
        DEFAULT_COMPLETION_ESTIMATE
    assert token_estimate("/v1/embeddings", {"max_tokens": 10}, 400) == 100


def test_a_key_without_limits_is_never_refused() -> None:
    limiter = RateLimiter(Clock())
    key = KeyPolicy(b"d" * 32, "d")
    for _ in range(1000):
        limiter.admit(key)
