"""``llmserve_lora_adapters_resident`` follows the live replicas (simulated engines): a
replica removed by a scale-down leaves no series behind, and a replica whose engine
restarted shows that its new engine holds no adapter."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable

import httpx
from openai import OpenAI

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from llmserve.llm.tiny_model import cached_tiny_model
from llmserve.serve.handle import replica_ids

SERIES = re.compile(r'^llmserve_lora_adapters_resident\{model_name="tiny",replica="([^"]+)"\}'
                    r" (\S+)$")


def resident(url: str) -> dict[str, float]:
    """replica -> adapters resident there, as the gateway's /metrics says."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {m.group(1): float(m.group(2)) for line in text.splitlines()
            if (m := SERIES.match(line))}


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.1)


def engines() -> dict[str, int]:
    """replica id -> its engine's pid."""
    handle = serve.get_deployment_handle("LLMServer:tiny")
    return {rid: handle.options(replica_id=rid).endpoint.remote().result().pid
            for rid in replica_ids(handle)}


def test_the_gauge_drops_replicas_that_went_away_and_resets_on_restart() -> None:
    model = cached_tiny_model(num_loras=2)
    config = LLMConfig(
        model_loading_config={"model_id": "tiny", "model_source": str(model)},
        llm_engine="sim",
        lora_config={"dynamic_lora_loading_path": str(model / "loras")},
        deployment_config={"autoscaling_config": {
            "min_replicas": 1, "max_replicas": 2, "initial_replicas": 2,
            "downscale_delay_s": 8, "look_back_period_s": 0.5}})
    serve.shutdown()
    try:
        serve.run(build_openai_app({"llm_configs": [config]}), port=0)
        url = serve.http_url() or ""
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        before = set(engines())
        assert len(before) == 2
        # a cold adapter goes to the replica holding the fewest: one on each
        for name in ("tiny:lora-0", "tiny:lora-1"):
            client.completions.create(model=name, prompt="hi", max_tokens=2)
        assert resident(url) == dict.fromkeys(before, 1.0)

        # idle: the autoscaler removes one replica, and its series goes with it
        wait_until(lambda: len(engines()) == 1, 60, "the scale-down to one replica")
        (kept,) = engines()
        wait_until(lambda: set(resident(url)) == {kept}, 10, "the removed replica's series "
                   "to go")
        assert resident(url)[kept] == 1.0

        # its engine dies and the replica starts a new one: nothing resident there
        old_pid = engines()[kept]
        os.kill(old_pid, signal.SIGKILL)
        wait_until(lambda: engines().get(kept) not in (None, old_pid), 60,
                   "the engine restart")
        wait_until(lambda: resident(url) == {kept: 0.0}, 20, "the restarted engine's count")
        answer = client.completions.create(model="tiny:lora-0", prompt="hi", max_tokens=2)
        assert answer.model == "tiny:lora-0"  # loaded again into the new engine
        assert resident(url) == {kept: 1.0}
    finally:
        serve.shutdown()
