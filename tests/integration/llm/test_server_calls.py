"""`LLMServer.chat` / `completions` through a handle, as Ray Serve LLM composes them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from llmserve import serve
from llmserve.llm import LLMConfig, build_llm_deployment
from tests.fixtures_engines import cached_tiny_model

CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def handle() -> Iterator[serve.DeploymentHandle]:
    serve.shutdown()
    config = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "sim", "model_source": str(cached_tiny_model())},
        "llm_engine": "sim",
    })
    yield serve.run(build_llm_deployment(config), route_prefix=None)
    serve.shutdown()


def test_chat_without_stream_yields_one_response(handle: serve.DeploymentHandle) -> None:
    items = list(handle.options(stream=True).chat.remote(
        {"messages": CHAT, "max_tokens": 4}))
    assert len(items) == 1
    assert items[0]["model"] == "sim"
    assert items[0]["choices"][0]["message"]["content"]
    assert items[0]["usage"]["completion_tokens"] == 4


def test_streamed_completion_yields_sse_lines(handle: serve.DeploymentHandle) -> None:
    items = list(handle.options(stream=True).completions.remote(
        {"prompt": "hello", "max_tokens": 3, "stream": True}))
    assert all(item.startswith("data: ") and item.endswith("\n\n") for item in items)
    assert items[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(item[6:]) for item in items[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks)


def test_engine_error_yields_the_openai_error_body(handle: serve.DeploymentHandle) -> None:
    items = list(handle.options(stream=True).chat.remote(
        {"model": "no-such-model", "messages": CHAT}))
    assert len(items) == 1 and "error" in items[0]
