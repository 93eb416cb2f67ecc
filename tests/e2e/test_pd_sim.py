"""Prefill/decode disaggregation through `build_pd_openai_app`, simulator engines (fast).

The simulator speaks vLLM's KV-transfer protocol (``kv_transfer_params``), so these tests
check the gateway's side: the two-step flow, what the client sees, pools, routing, scaling
and faults. The real KV hand-off between vLLM engines is in test_pd_vllm.py.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from dashboards.catalogue import read_catalogue
from llmserve import serve
from llmserve.llm import build_pd_openai_app
from llmserve.serve.exceptions import ConfigError
from tests.fixtures_engines import cached_tiny_model

CHAT = [{"role": "user", "content": "tell me about prefill and decode " * 8}]
PROMPT = "the quick brown fox jumps over the lazy dog " * 12


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(cached_tiny_model())


def sim(model_dir: str, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "model_loading_config": {"model_id": "sim", "model_source": model_dir},
        "llm_engine": "sim",
    }
    return base | changes


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([^{\s]+)(?:\{([^}]*)\})?\s+(\S+)$", line)
        if not match or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def engine_infos(deployment: str) -> list[object]:
    from llmserve.serve.handle import replica_ids

    handle = serve.get_deployment_handle(deployment)
    return [handle.options(replica_id=rid).endpoint.remote().result()
            for rid in sorted(replica_ids(handle))]


def wait_for(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


# ---- config ---------------------------------------------------------------------------
def test_pools_must_serve_the_same_model(model_dir: str) -> None:
    other = sim(model_dir, model_loading_config={"model_id": "other",
                                                 "model_source": model_dir})
    with pytest.raises(ConfigError, match="same model_id"):
        build_pd_openai_app({"prefill_config": sim(model_dir), "decode_config": other})
    lora = sim(model_dir, lora_config={"max_num_adapters_per_replica": 2})
    with pytest.raises(ConfigError, match="same lora_config"):
        build_pd_openai_app({"prefill_config": lora, "decode_config": sim(model_dir)})
    with pytest.raises(ConfigError, match="decode_config"):
        build_pd_openai_app({"prefill_config": sim(model_dir)})
    with pytest.raises(ConfigError, match="unknown build_pd_openai_app arguments"):
        build_pd_openai_app({"prefill_config": sim(model_dir), "decode_config": sim(model_dir),
                             "llm_configs": []})
    sglang = sim(model_dir, llm_engine="sglang")
    with pytest.raises(ConfigError, match=r"prefill_config\.llm_engine"):
        build_pd_openai_app({"prefill_config": sglang, "decode_config": sglang})


def test_defaults_connector_and_decode_routing(model_dir: str, tmp_path: object) -> None:
    from llmserve.llm.pd import pool_config

    vllm = sim(model_dir, llm_engine="vllm")
    prefill = pool_config(vllm, role="prefill")
    decode = pool_config(vllm, role="decode")
    assert prefill.engine_kwargs["kv_transfer_config"]["kv_connector"] == "NixlConnector"
    # vLLM's roles for NIXL (kv_both is deprecated): the simulator gets the same flag
    assert prefill.engine_kwargs["kv_transfer_config"]["kv_role"] == "kv_producer"
    assert decode.engine_kwargs["kv_transfer_config"]["kv_role"] == "kv_consumer"
    simulated = pool_config(sim(model_dir), role="decode")
    assert simulated.engine_kwargs["kv_transfer_config"]["kv_role"] == "kv_consumer"
    assert prefill.routing_config["policy"] == "prefix_aware"
    assert decode.routing_config["policy"] == "least_loaded"
    own = {"kv_connector": "ExampleConnector", "kv_role": "kv_both",
           "kv_connector_extra_config": {"shared_storage_path": "/tmp/x"}}
    passed = pool_config(sim(model_dir, llm_engine="vllm",
                             engine_kwargs={"kv_transfer_config": own},
                             routing_config={"policy": "round_robin"}), role="decode")
    assert passed.engine_kwargs["kv_transfer_config"] == own  # unchanged
    assert passed.routing_config["policy"] == "round_robin"
    path = tmp_path / "decode.yaml"  # type: ignore[operator]
    path.write_text(f"model_loading_config: {{model_id: sim, model_source: {model_dir}}}\n"
                    "llm_engine: sim\n")
    assert pool_config(str(path), role="decode").routing_config["policy"] == "least_loaded"


# ---- flow -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pd_url(model_dir: str) -> Iterator[str]:
    """One PD app: 1 prefill + 2 decode replicas."""
    serve.shutdown()
    pd = build_pd_openai_app({
        "prefill_config": sim(model_dir),
        "decode_config": sim(model_dir, deployment_config={"num_replicas": 2}),
        "stats_refresh_s": 3600.0,  # the tests below decide when a replica is seen as gone
    })
    serve.run(pd, port=0)
    yield serve.http_url() or ""
    serve.shutdown()


def aggregated_url() -> str:
    """An engine of the decode pool asked directly: one engine doing prefill and decode,
    which is what aggregated serving relays."""
    return str(engine_infos("LLMServer:decode:sim")[0].url)  # type: ignore[attr-defined]


def decode_external_hits() -> float:
    """Prompt tokens the decode engines loaded from prefill engines (vLLM's metric)."""
    return sum(metric(httpx.get(f"{info.url}/metrics", timeout=10).text,  # type: ignore[attr-defined]
                      "vllm:external_prefix_cache_hits_total")
               for info in engine_infos("LLMServer:decode:sim"))


def aggregated_key() -> str:
    """The secret that engine demands (llmserve gave it one)."""
    return str(engine_infos("LLMServer:decode:sim")[0].api_key)  # type: ignore[attr-defined]


def test_answers_equal_aggregated_serving(pd_url: str) -> None:
    pd = OpenAI(base_url=f"{pd_url}/v1", api_key="x", max_retries=0)
    agg = OpenAI(base_url=f"{aggregated_url()}/v1", api_key=aggregated_key(), max_retries=0)
    for client_kind in ("chat", "completions"):
        answers = []
        for client in (pd, agg):
            hits_before = decode_external_hits()
            if client_kind == "chat":
                out = client.chat.completions.create(model="sim", messages=CHAT,  # type: ignore[arg-type]
                                                     max_tokens=12, temperature=0)
                text = out.choices[0].message.content
            else:
                out = client.completions.create(model="sim", prompt=PROMPT, max_tokens=12,
                                                temperature=0)
                text = out.choices[0].text
            assert out.usage is not None
            answers.append((text, out.usage.prompt_tokens, out.usage.completion_tokens,
                            out.choices[0].finish_reason))
            if client is pd:  # the decode engine loaded the KV (the sim's NIXL connector)
                assert decode_external_hits() - hits_before == out.usage.prompt_tokens - 1
        assert answers[0] == answers[1]
        assert answers[0][2] == 12


def test_stream_with_usage_equals_aggregated(pd_url: str) -> None:
    results = []
    for base in (pd_url, aggregated_url()):
        client = OpenAI(base_url=f"{base}/v1", api_key=aggregated_key(), max_retries=0)
        stream = client.chat.completions.create(
            model="sim", messages=CHAT, max_tokens=9, temperature=0, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
        assert usage is not None and not chunks[-1].choices
        results.append((text, usage.prompt_tokens, usage.completion_tokens))
    assert results[0] == results[1]
    completions = OpenAI(base_url=f"{pd_url}/v1", api_key="x", max_retries=0)
    pieces = list(completions.completions.create(model="sim", prompt=PROMPT, max_tokens=5,
                                                 stream=True, temperature=0))
    assert sum(1 for p in pieces if p.choices and p.choices[0].text) == 5


def test_requests_that_cannot_be_split_get_400(pd_url: str) -> None:
    for extra, param in (({"n": 2}, "n"), ({"echo": True}, "echo"),
                         ({"prompt_logprobs": 1}, "prompt_logprobs")):
        response = httpx.post(f"{pd_url}/v1/completions", timeout=30,
                              json={"model": "sim", "prompt": "hi", "max_tokens": 2, **extra})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


def test_prefill_error_reaches_the_client_as_that_error(pd_url: str) -> None:
    response = httpx.post(f"{pd_url}/v1/chat/completions", timeout=30,
                          json={"model": "sim", "messages": "not a list", "max_tokens": 2})
    agg = httpx.post(f"{aggregated_url()}/v1/chat/completions", timeout=30,
                     json={"model": "sim", "messages": "not a list", "max_tokens": 2},
                     headers={"authorization": f"Bearer {aggregated_key()}"})
    assert response.status_code == agg.status_code
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["type"] == agg.json()["error"]["type"]
    metrics = httpx.get(f"{pd_url}/metrics").text
    assert metric(metrics, "llmserve_pd_requests_total", model_name="sim",
                  outcome="prefill_error") >= 1


def test_metrics_per_pool_and_handoff(pd_url: str) -> None:
    before = httpx.get(f"{pd_url}/metrics").text
    client = OpenAI(base_url=f"{pd_url}/v1", api_key="x", max_retries=0)
    for _ in range(3):
        client.completions.create(model="sim", prompt=PROMPT, max_tokens=4)
    after = httpx.get(f"{pd_url}/metrics").text
    for name in ("llmserve_pd_prefill_time_to_first_token_seconds_count",
                 "llmserve_pd_decode_time_to_first_token_seconds_count",
                 "llmserve_pd_handoff_seconds_count",
                 "llmserve_pd_decode_inter_token_latency_seconds_count"):
        assert metric(after, name, model_name="sim") - metric(before, name,
                                                              model_name="sim") == 3, name
    ok = "llmserve_pd_requests_total"
    assert metric(after, ok, outcome="ok") - metric(before, ok, outcome="ok") == 3
    blocks = "llmserve_pd_kv_blocks_handed_off_total"
    assert metric(after, blocks) > metric(before, blocks)
    catalogue = read_catalogue()  # docs/metrics.md names every metric exported here
    for family in text_string_to_metric_families(after):
        name = family.name + ("_total" if family.type == "counter" else "")
        assert not name.startswith("llmserve_") or name in catalogue, name
    counted = "llmserve_requests_total"  # once each, as any relayed request
    assert metric(after, counted, route="/v1/completions", status="200") - metric(
        before, counted, route="/v1/completions", status="200") == 3


def test_decode_by_load_spreads_over_both_decode_replicas(pd_url: str) -> None:
    infos = engine_infos("LLMServer:decode:sim")
    assert len(infos) == 2
    before = [metric(httpx.get(f"{i.url}/metrics").text,  # type: ignore[attr-defined]
                     "vllm:request_success_total") for i in infos]
    with httpx.Client(timeout=60) as client:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: client.post(
                f"{pd_url}/v1/completions",
                json={"model": "sim", "prompt": f"{k} {PROMPT}", "max_tokens": 30}), range(16)))
    after = [metric(httpx.get(f"{i.url}/metrics").text,  # type: ignore[attr-defined]
                    "vllm:request_success_total") for i in infos]
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == 16 and min(served) >= 3, served


def test_decode_replica_unreachable_after_prefill_is_retried_elsewhere(pd_url: str) -> None:
    victim = engine_infos("LLMServer:decode:sim")[0]
    os.kill(victim.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    before = httpx.get(f"{pd_url}/metrics").text
    client = OpenAI(base_url=f"{pd_url}/v1", api_key="x", max_retries=0)
    for k in range(12):  # least_loaded breaks ties at random: some go to the dead one
        out = client.completions.create(model="sim", prompt=f"{k} {PROMPT}", max_tokens=3)
        assert out.usage is not None and out.usage.completion_tokens == 3
    after = httpx.get(f"{pd_url}/metrics").text
    name = "llmserve_pd_decode_retries_total"
    assert metric(after, name) - metric(before, name) >= 1
    # the replica restarts its engine; wait so later tests have both again
    wait_for(lambda: all(i.ready and i.pid != victim.pid  # type: ignore[attr-defined]
                         for i in engine_infos("LLMServer:decode:sim")), 60)


def decode_running(infos: list[object]) -> float:
    return sum(metric(httpx.get(f"{i.url}/metrics").text,  # type: ignore[attr-defined]
                      "vllm:num_requests_running") for i in infos)


def test_client_leaving_mid_stream_aborts_the_decode(pd_url: str) -> None:
    infos = engine_infos("LLMServer:decode:sim")
    body = {"model": "sim", "prompt": f"leave {PROMPT}", "max_tokens": 4000,
            "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as client, \
            client.stream("POST", f"{pd_url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        pieces = response.iter_raw()  # kept: a dropped iterator closes the response
        next(pieces)
        wait_for(lambda: decode_running(infos) == 1, 5)
    wait_for(lambda: decode_running(infos) == 0, 10)  # 4,000 tokens would take far longer
    text = httpx.get(f"{pd_url}/metrics").text
    assert metric(text, "llmserve_pd_requests_total", outcome="client_left") >= 1


def test_decode_replica_dying_mid_stream_ends_with_an_error_event(pd_url: str) -> None:
    infos = engine_infos("LLMServer:decode:sim")
    body = {"model": "sim", "prompt": f"die {PROMPT}", "max_tokens": 4000,
            "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as client, \
            client.stream("POST", f"{pd_url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        chunks = response.iter_text()
        received = next(chunks)
        for info in infos:
            os.kill(info.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        received += "".join(chunks)  # ends: no hang
    events = [e for e in received.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2] and "bad_gateway" in events[-2]
    wait_for(lambda: all(i.ready and i.pid not in {o.pid for o in infos}  # type: ignore[attr-defined]
                         for i in engine_infos("LLMServer:decode:sim")), 60)


def test_zz_no_hand_off_left_pending(pd_url: str) -> None:
    """After every request above (errors, retries, clients leaving, replicas dying)."""
    wait_for(lambda: metric(httpx.get(f"{pd_url}/metrics").text,
                            "llmserve_pd_requests_in_flight", model_name="sim") == 0, 10)
    text = httpx.get(f"{pd_url}/metrics").text
    assert 'llmserve_pd_requests_in_flight{model_name="sim"} 0.0' in text
