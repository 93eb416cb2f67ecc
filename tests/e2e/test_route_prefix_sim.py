"""The OpenAI gateway deployed under a route prefix (``serve.run(..., route_prefix=...)``)
answers below that prefix, and counts its routes by template."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from tests.e2e.test_pd_sim import metric
from tests.fixtures_engines import cached_tiny_model


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    serve.shutdown()
    cfg = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "sim", "model_source": str(cached_tiny_model())},
        "llm_engine": "sim"})
    serve.run(build_openai_app({"llm_configs": [cfg]}), name="llm", route_prefix="/llm",
              port=0)
    yield str(serve.http_url())
    serve.shutdown()


def test_the_gateway_answers_below_its_route_prefix(url: str) -> None:
    client = OpenAI(base_url=f"{url}/llm/v1", api_key="x", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["sim"]
    reply = client.chat.completions.create(
        model="sim", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert httpx.get(f"{url}/llm/health").status_code == 200
    text = httpx.get(f"{url}/llm/metrics").text
    assert metric(text, "llmserve_requests_total", route="/v1/chat/completions",
                  status="200") == 1
    assert metric(text, "llmserve_requests_total", route="unmatched") == 0
    missing = httpx.get(f"{url}/llm/v1/nothing-here")
    assert missing.status_code == 404
    assert "/v1/nothing-here" in missing.json()["error"]["message"]
