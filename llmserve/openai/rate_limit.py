"""Per-key request and token rates (token buckets refilled continuously).

A request is admitted while its key has a request left in the last minute's budget and
its token balance is not exhausted; the tokens a request used (its ``usage``) are
charged when it ends, so a key can overdraw by one request, then waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from llmserve.openai.errors import TooManyRequests
from llmserve.openai.key_policy import KeyPolicy


@dataclass
class Bucket:
    per_minute: int
    balance: float
    at_s: float

    def refill(self, now_s: float) -> None:
        self.balance = min(float(self.per_minute),
                           self.balance + (now_s - self.at_s) * self.per_minute / 60.0)
        self.at_s = now_s

    def wait_s(self, needed: float) -> float:
        return max(0.0, (needed - self.balance) * 60.0 / self.per_minute)


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._requests: dict[bytes, Bucket] = {}
        self._tokens: dict[bytes, Bucket] = {}

    def admit(self, policy: KeyPolicy) -> None:
        """Take one request from the key's budget, or raise 429 with Retry-After."""
        now = self.clock()
        requests = self._bucket(self._requests, policy.digest, policy.requests_per_minute, now)
        tokens = self._bucket(self._tokens, policy.digest, policy.tokens_per_minute, now)
        if requests is not None and requests.balance < 1.0:
            raise TooManyRequests(
                f"API key {policy.name!r} is over its {requests.per_minute} requests per "
                f"minute", retry_after_s=max(1.0, requests.wait_s(1.0)))
        if tokens is not None and tokens.balance <= 0.0:
            raise TooManyRequests(
                f"API key {policy.name!r} is over its {tokens.per_minute} tokens per minute",
                retry_after_s=max(1.0, tokens.wait_s(1.0)))
        if requests is not None:
            requests.balance -= 1.0

    def charge_tokens(self, policy: KeyPolicy, used: int) -> None:
        bucket = self._bucket(self._tokens, policy.digest, policy.tokens_per_minute,
                              self.clock())
        if bucket is not None:
            bucket.balance -= used

    def _bucket(self, buckets: dict[bytes, Bucket], digest: bytes, per_minute: int | None,
                now_s: float) -> Bucket | None:
        if per_minute is None:
            return None
        bucket = buckets.get(digest)
        if bucket is None:
            bucket = buckets[digest] = Bucket(per_minute, float(per_minute), now_s)
        bucket.refill(now_s)
        return bucket
