"""Prefix-aware routing through the real gateway, in front of simulated vLLM replicas.

The simulator caches prefixes exactly as vLLM does and exports vLLM's counters, so the
replicas' own ``/metrics`` tell whether repeated prefixes found their cache.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Sequence

import httpx
import pytest

from benchmarks.cluster_procs import sim_cluster
from llmserve import serve
from llmserve.llm import build_openai_app
from llmserve.openai.prompt import PromptRenderer
from routing import Candidate, RouteRequest
from routing.policy import RoutingPolicy
from tests.e2e.conftest import free_port
from tests.fixtures_engines import cached_tiny_model

GROUPS = 4
PER_GROUP = 3
SYSTEM_WORDS = 160  # ~ several 16-token blocks of shared prefix


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(cached_tiny_model())


@pytest.fixture(scope="module")
def replicas(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    log = tmp_path_factory.mktemp("sim") / "sim.log"
    with sim_cluster(model_dir, 3, free_port(), "llama-3.1-8b-h100", 1.0, log) as urls:
        yield urls


def counter(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def hit_counts(urls: list[str]) -> tuple[float, float]:
    texts = [httpx.get(f"{u}/metrics").text for u in urls]
    return (sum(counter(t, "vllm:prefix_cache_hits_total") for t in texts),
            sum(counter(t, "vllm:prefix_cache_queries_total") for t in texts))


def messages(group: int, index: int, salt: str = "") -> list[dict[str, str]]:
    system = " ".join(f"{salt}rule{group}-{i}" for i in range(SYSTEM_WORDS))
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"question {index} of group {group}"}]


def run_groups(url: str, model: str, salt: str) -> None:
    with httpx.Client(timeout=30) as client:
        for index in range(PER_GROUP):
            for group in range(GROUPS):
                response = client.post(f"{url}/v1/chat/completions", json={
                    "model": model, "messages": messages(group, index, salt), "max_tokens": 2})
                assert response.status_code == 200, response.text


@pytest.mark.parametrize("policy,min_hit_rate,max_hit_rate", [
    ("prefix_aware", 0.6, 1.0),
    ("round_robin", 0.0, 0.05),  # 3 replicas, 4 groups: each group visits every replica
])
def test_repeated_prefixes_hit_the_replica_that_cached_them(
        replicas: list[str], model_dir: str, policy: str, min_hit_rate: float,
        max_hit_rate: float) -> None:
    serve.shutdown()
    try:
        app = build_openai_app({"worker_urls": replicas, "worker_engine": "sim",
                                "routing_config": {"policy": policy}})
        serve.run(app, port=0)
        hits0, queries0 = hit_counts(replicas)
        run_groups(serve.http_url(), model_dir, salt=policy)  # fresh prefixes per test
        hits, queries = hit_counts(replicas)
    finally:
        serve.shutdown()
    rate = (hits - hits0) / (queries - queries0)
    # first request of each group misses; the other two re-use its system prompt
    assert min_hit_rate <= rate <= max_hit_rate, rate


EVENTS: list[tuple[str, str]] = []


class RecordingPolicy(RoutingPolicy):
    """First replica; records the hooks the gateway calls."""

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        return sorted(candidates, key=lambda c: c.replica_id)

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        EVENTS.append(("routed", request.request_id))

    def on_first_token(self, request: RouteRequest, replica_id: str) -> None:
        EVENTS.append(("first_token", request.request_id))

    def on_finished(self, request: RouteRequest, replica_id: str) -> None:
        EVENTS.append(("finished", request.request_id))


@pytest.mark.parametrize("stream", [True, False])
def test_the_policy_hears_of_the_first_token_then_the_end(
        replicas: list[str], model_dir: str, stream: bool) -> None:
    serve.shutdown()
    EVENTS.clear()
    try:
        policy = f"{__name__}:RecordingPolicy"
        app = build_openai_app({"worker_urls": replicas, "worker_engine": "sim",
                                "routing_config": {"policy": policy}})
        serve.run(app, port=0)
        with httpx.Client(timeout=30) as client:
            response = client.post(f"{serve.http_url()}/v1/chat/completions", json={
                "model": model_dir, "messages": messages(0, 0), "max_tokens": 4,
                "stream": stream})
            assert response.status_code == 200 and response.text
    finally:
        serve.shutdown()
    assert [kind for kind, _ in EVENTS] == ["routed", "first_token", "finished"]
    assert len({rid for _, rid in EVENTS}) == 1


def test_renderer_tokens_equal_the_engines_own(replicas: list[str], model_dir: str) -> None:
    async def both() -> tuple[list[int] | None, list[int] | None]:
        async with httpx.AsyncClient() as client:
            payload = {"model": model_dir, "messages": messages(0, 0)}
            local = PromptRenderer(model_dir, model_dir, client)
            remote = PromptRenderer(model_dir, None, client)
            ours = await local.route_request("a", "/v1/chat/completions", payload, None)
            engine = await remote.route_request("b", "/v1/chat/completions", payload, None,
                                                replicas[0])
            asked = await client.post(f"{replicas[0]}/tokenize", json=payload)
            assert asked.json()["tokens"] == list(engine.prompt_token_ids or ())
            assert local.mode == "tokenizer" and remote.mode == "engine"
            return (list(ours.prompt_token_ids or ()), list(engine.prompt_token_ids or ()))

    ours, engine = asyncio.run(both())
    assert ours and ours == engine


def test_without_tokenizer_or_engine_it_routes_on_text(caplog: pytest.LogCaptureFixture) -> None:
    async def text_only() -> tuple[str | None, tuple[int, ...] | None]:
        renderer = PromptRenderer("m", None, None)
        route = await renderer.route_request("a", "/v1/completions",
                                             {"prompt": "hello"}, "s1")
        assert route.session_key == "s1"
        return route.prompt, route.prompt_token_ids

    with caplog.at_level("WARNING", logger="llmserve.openai"):
        assert asyncio.run(text_only()) == ("hello", None)
    assert "prompt characters" in caplog.text


def test_fast_encode_equals_the_transformers_call(model_dir: str) -> None:
    """The renderer calls the tokenizer's Rust core directly: same ids as the wrapper."""
    renderer = PromptRenderer("m", model_dir, None)
    asyncio.run(renderer.wait_loaded())
    tokenizer = renderer.tokenizer
    assert tokenizer.backend_tokenizer is not None
    chat = tokenizer.apply_chat_template(messages(1, 2), tokenize=False,
                                         add_generation_prompt=True)
    for text in (chat, "Hello, world!  Ünïcödé\n\ttabs", "", " ".join(["word"] * 500)):
        for special in (True, False):
            expected = tokenizer(text, add_special_tokens=special)["input_ids"]
            assert renderer.encode(text, special) == expected
