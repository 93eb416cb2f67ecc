"""Draining on the Ray runtime (simulated engines): shutting down lets the LLM stream in
flight finish while new requests get 503 and ``/-/healthz`` fails."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from tests.faults.harness import poll
from tests.fixtures_engines import cached_tiny_model
from tests.integration.ray.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]
CHAT = [{"role": "user", "content": "hello"}]


def test_shutdown_on_ray_lets_streams_in_flight_finish(ray_serve: RayCluster) -> None:
    cfg = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "sim", "model_source": str(cached_tiny_model())},
        "llm_engine": "sim", "engine_kwargs": {"time_scale": 0.1},
        "deployment_config": {"ray_actor_options": {"num_cpus": 0.1}}})
    serve.run(build_openai_app({"llm_configs": [cfg], "ingress_deployment_config": {
        "ray_actor_options": {"num_cpus": 0.1}}}), port=0, runtime="ray")
    url = str(serve.http_url())
    body = {"model": "sim", "messages": CHAT, "max_tokens": 300, "ignore_eos": True,
            "stream": True}
    events: list[str] = []
    stopper = threading.Thread(target=serve.shutdown)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        events.append(next(line for line in lines if line.startswith("data:")))
        stopper.start()  # shut down with the stream in flight (~7 s of it left)
        stop_started_s = time.monotonic()
        poll(lambda: httpx.get(f"{url}/-/healthz", timeout=5).status_code == 503, 20,
             "/-/healthz fails while draining")
        refused = httpx.post(f"{url}/v1/chat/completions", timeout=10,
                             json={"model": "sim", "messages": CHAT, "max_tokens": 2})
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        events += [line for line in lines if line.startswith("data:")]
        finished_s = time.monotonic()
    assert finished_s - stop_started_s > 2.0  # the stream went on while serve shut down
    stopper.join(120)
    assert not stopper.is_alive()
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all("error" not in c for c in chunks)
    assert sum(len(c["choices"]) for c in chunks) >= 300  # every token arrived
