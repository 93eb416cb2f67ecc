"""Shutting down drains LLM traffic: streams in flight finish, new requests get 503 and
``/-/healthz`` fails meanwhile."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from tests.faults.harness import poll

CHAT = [{"role": "user", "content": "hello"}]


@pytest.mark.usefixtures("fresh_serve")
def test_shutdown_lets_streams_in_flight_finish(model_dir: str) -> None:
    cfg = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "sim", "model_source": model_dir},
        "llm_engine": "sim", "engine_kwargs": {"time_scale": 0.1}})
    serve.run(build_openai_app({"llm_configs": [cfg]}), port=0)
    url = serve.http_url()
    body = {"model": "sim", "messages": CHAT, "max_tokens": 40, "ignore_eos": True,
            "stream": True}
    events: list[str] = []
    stopper = threading.Thread(target=serve.shutdown)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as reply:
        lines = reply.iter_lines()
        events.append(next(line for line in lines if line.startswith("data:")))
        stopper.start()  # shut down with the stream in flight
        poll(lambda: httpx.get(f"{url}/-/healthz", timeout=5).status_code == 503, 10,
             "/-/healthz fails while draining")
        refused = httpx.post(f"{url}/v1/chat/completions", timeout=10,
                             json={"model": "sim", "messages": CHAT, "max_tokens": 2})
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        events += [line for line in lines if line.startswith("data:")]
    stopper.join(60)
    assert not stopper.is_alive()
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all("error" not in c for c in chunks)
    assert sum(len(c["choices"]) for c in chunks) >= 40  # every token arrived
