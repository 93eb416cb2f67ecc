"""`worker_urls` whose workers come up after the gateway: the adapters a late worker lists
appear in ``/v1/models`` once it is up, and requests for them go only to it (simulated
engines as separate processes, real HTTP, the official client)."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from llmserve import serve
from llmserve.llm import build_openai_app
from llmserve.llm.tiny_model import cached_tiny_model
from tests.faults.harness import MODEL, SimEngine, metric_sum, poll


def finished(engine: SimEngine) -> float:
    text = httpx.get(f"{engine.url}/metrics", timeout=5).text
    return metric_sum(text, "vllm:request_success_total")


def test_a_late_workers_adapters_are_listed_and_routed_to_it() -> None:
    model = cached_tiny_model(num_loras=2)
    early = SimEngine(str(model)).start()
    late = SimEngine(str(model), extra=("--lora-modules",
                                        f"late-one={model / 'loras' / 'lora-0'}"))
    serve.shutdown()
    try:
        serve.run(build_openai_app({"worker_urls": [early.url, late.url],
                                    "worker_engine": "sim",
                                    "routing_config": {"policy": "round_robin"}}), port=0)
        client = OpenAI(base_url=f"{serve.http_url()}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == [MODEL]
        with pytest.raises(openai.APIStatusError) as early_answer:
            client.completions.create(model="late-one", prompt="hi", max_tokens=2)
        assert early_answer.value.status_code == 503  # a worker is not up yet: retry
        late.start()
        poll(lambda: "late-one" in {m.id for m in client.models.list()}, 20,
             "the late worker's adapter is listed")
        card = client.models.retrieve("late-one")
        assert card.model_dump()["parent"] == MODEL
        for _ in range(4):  # round robin would alternate; the adapter pins the late worker
            answer = client.completions.create(model="late-one", prompt="hi", max_tokens=2)
            assert answer.model == "late-one"
        assert (finished(early), finished(late)) == (0, 4)
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2)  # base: either
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="never-listed", prompt="hi", max_tokens=2)
    finally:
        serve.shutdown()
        early.stop()
        late.stop()


def test_a_late_workers_model_gets_the_gateways_adapter_folder() -> None:
    """``worker_lora_config`` when no worker is up at start: once one is, the folder's
    adapters are listed under its model and loaded into it on demand."""
    model = cached_tiny_model(num_loras=2)
    late = SimEngine(str(model), extra=("--enable-lora", "--max-loras", "1"))
    serve.shutdown()
    try:
        serve.run(build_openai_app({
            "worker_urls": [late.url], "worker_engine": "sim",
            "worker_lora_config": {"dynamic_lora_loading_path": str(model / "loras"),
                                   "max_num_adapters_per_replica": 1}}), port=0)
        client = OpenAI(base_url=f"{serve.http_url()}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == []
        late.start()
        wanted = {MODEL, f"{MODEL}:lora-0", f"{MODEL}:lora-1"}
        poll(lambda: {m.id for m in client.models.list()} == wanted, 20,
             "the late worker's model and the folder's adapters are listed")
        for name in (f"{MODEL}:lora-0", f"{MODEL}:lora-1", f"{MODEL}:lora-0"):
            answer = client.completions.create(model=name, prompt="hi", max_tokens=2)
            assert answer.model == name
        cards = httpx.get(f"{late.url}/v1/models", timeout=5).json()["data"]
        assert [c["id"] for c in cards if c.get("parent")] == [f"{MODEL}:lora-0"]
    finally:
        serve.shutdown()
        late.stop()
