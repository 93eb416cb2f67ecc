"""Each replica's vLLM ``/metrics`` before and after a run: hit rate and load imbalance."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp

QUERIES = "vllm:prefix_cache_queries_total"
HITS = "vllm:prefix_cache_hits_total"
REQUESTS = "vllm:request_success_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
COUNTERS = (QUERIES, HITS, REQUESTS, PROMPT_TOKENS, GENERATION_TOKENS)
GAUGES = (RUNNING, WAITING)


def parse_samples(text: str, names: Sequence[str]) -> dict[str, float]:
    """Sum each named sample over its label sets (data-parallel engines, finish reasons)."""
    wanted = set(names)
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0 or line[:name_end] not in wanted:
            continue
        try:
            sums[line[:name_end]] += float(line.rsplit(" ", 1)[1])
        except (ValueError, IndexError):
            continue
    return sums


@dataclass(frozen=True)
class ReplicaLoad:
    """What one replica did between two scrapes."""

    url: str
    requests: float
    prompt_tokens: float
    generation_tokens: float
    prefix_cache_queries: float
    prefix_cache_hits: float

    @property
    def tokens(self) -> float:
        return self.prompt_tokens + self.generation_tokens

    @property
    def prefix_cache_hit_rate(self) -> float:
        q = self.prefix_cache_queries
        return self.prefix_cache_hits / q if q else 0.0

    def as_dict(self) -> dict[str, float | str]:
        return {"url": self.url, "requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "generation_tokens": self.generation_tokens,
                "prefix_cache_queries": self.prefix_cache_queries,
                "prefix_cache_hits": self.prefix_cache_hits,
                "prefix_cache_hit_rate": self.prefix_cache_hit_rate}


def replica_delta(url: str, before: Mapping[str, float], after: Mapping[str, float]) -> ReplicaLoad:
    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    return ReplicaLoad(url, d(REQUESTS), d(PROMPT_TOKENS), d(GENERATION_TOKENS), d(QUERIES),
                       d(HITS))


def imbalance(values: Sequence[float]) -> float:
    """max / mean (1.0 = perfectly even; 0 when nothing was served)."""
    if not values or sum(values) <= 0:
        return 0.0
    return max(values) / (sum(values) / len(values))


def cluster_summary(loads: Sequence[ReplicaLoad]) -> dict[str, object]:
    queries = sum(r.prefix_cache_queries for r in loads)
    hits = sum(r.prefix_cache_hits for r in loads)
    return {
        "prefix_cache_queries": queries,
        "prefix_cache_hits": hits,
        "prefix_cache_hit_rate": hits / queries if queries else 0.0,
        "load_imbalance_requests": imbalance([r.requests for r in loads]),
        "load_imbalance_tokens": imbalance([r.tokens for r in loads]),
        "replicas": [r.as_dict() for r in loads],
    }


async def scrape(session: aiohttp.ClientSession, urls: Sequence[str],
                 names: Sequence[str] = COUNTERS) -> list[dict[str, float]]:
    """Each URL's samples; a replica that does not answer reads as all zeros."""

    async def one(url: str) -> dict[str, float]:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                return parse_samples(await response.text(), names)
        except (aiohttp.ClientError, TimeoutError):
            return dict.fromkeys(names, 0.0)

    return list(await asyncio.gather(*(one(u) for u in urls)))


def metrics_url(url: str) -> str:
    """Accept a replica's base URL or its full /metrics URL."""
    url = url.rstrip("/")
    return url if url.endswith("/metrics") else f"{url}/metrics"
