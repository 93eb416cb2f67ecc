"""Per-key request and token rates (token buckets refilled continuously).

A request is admitted while its key has a request left in the last minute's budget and
its token balance covers the request's estimate (:func:`token_estimate`: the prompt at
one token per 4 bytes of body, plus ``max_tokens``, or 1024 when not given). The
estimate is held from the balance while the request runs and replaced by what it used
(its ``usage``) when it ends, so concurrent requests cannot together spend more than the
key's budget, except by what each uses beyond its estimate. A request whose usage is
unknown (the client left mid-stream, the engine failed) stays charged its estimate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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


BYTES_PER_TOKEN_ESTIMATE = 4
DEFAULT_COMPLETION_ESTIMATE = 1024  # reserved for a request that sets no max_tokens
NO_COMPLETION_PATHS = ("/v1/embeddings", "/tokenize", "/detokenize")


def token_estimate(path: str, payload: Mapping[str, Any], body_bytes: int) -> int:
    """What a request may use: its prompt (from its body's size) plus its completion."""
    prompt = -(-body_bytes // BYTES_PER_TOKEN_ESTIMATE)
    if path in NO_COMPLETION_PATHS:
        return prompt
    limit = next((payload[k] for k in ("max_completion_tokens", "max_tokens",
                                        "max_output_tokens") if payload.get(k) is not None),
                 None)
    completion = _positive_int(limit) or DEFAULT_COMPLETION_ESTIMATE
    return prompt + completion * (_positive_int(payload.get("n")) or 1)


def _positive_int(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return int(value) if ok else None


@dataclass
class TokenHold:
    """The tokens a running request holds from its key's balance."""

    policy: KeyPolicy
    tokens: float
    settled: bool = False


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._requests: dict[bytes, Bucket] = {}
        self._tokens: dict[bytes, Bucket] = {}

    def admit(self, policy: KeyPolicy, estimate_tokens: int = 0) -> TokenHold | None:
        """Take one request and ``estimate_tokens`` (at most the whole per-minute budget)
        from the key's budget, or raise 429 with Retry-After. The tokens are held until
        :meth:`settle`."""
        now = self.clock()
        requests = self._bucket(self._requests, policy.digest, policy.requests_per_minute, now)
        tokens = self._bucket(self._tokens, policy.digest, policy.tokens_per_minute, now)
        if requests is not None and requests.balance < 1.0:
            raise TooManyRequests(
                f"API key {policy.name!r} is over its {requests.per_minute} requests per "
                f"minute", retry_after_s=max(1.0, requests.wait_s(1.0)))
        needed = min(float(max(estimate_tokens, 0)), float(tokens.per_minute)) \
            if tokens is not None else 0.0
        if tokens is not None and (tokens.balance <= 0.0 or tokens.balance < needed):
            raise TooManyRequests(
                f"API key {policy.name!r} is over its {tokens.per_minute} tokens per minute",
                retry_after_s=max(1.0, tokens.wait_s(max(needed, 1.0))))
        if requests is not None:
            requests.balance -= 1.0
        if tokens is None:
            return None
        tokens.balance -= needed
        return TokenHold(policy, needed)

    def settle(self, hold: TokenHold | None, used: int | None) -> None:
        """The request ended: charge ``used`` tokens instead of its estimate (None:
        unknown, the estimate stays charged). Once per hold."""
        if hold is None or hold.settled:
            return
        hold.settled = True
        if used is None:
            return
        policy = hold.policy
        bucket = self._bucket(self._tokens, policy.digest, policy.tokens_per_minute,
                              self.clock())
        if bucket is not None:
            bucket.balance = min(float(bucket.per_minute),
                                 bucket.balance + hold.tokens - used)

    def _bucket(self, buckets: dict[bytes, Bucket], digest: bytes, per_minute: int | None,
                now_s: float) -> Bucket | None:
        if per_minute is None:
            return None
        bucket = buckets.get(digest)
        if bucket is None:
            bucket = buckets[digest] = Bucket(per_minute, float(per_minute), now_s)
        bucket.refill(now_s)
        return bucket
