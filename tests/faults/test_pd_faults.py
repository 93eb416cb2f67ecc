"""Prefill and decode replicas dying under a P/D gateway (``build_pd_openai_app`` fronting
simulated engines, each its own process, with vLLM's NIXL connector settings).

- A prefill replica dying mid-prefill: nothing has reached the client and the prompt's KV
  died with that engine, so the request starts over on another prefill replica; with none
  left the client gets a 502.
- A decode replica dying mid-stream: the stream ends with an error event and ``[DONE]``.
Afterwards nothing is left running on any engine and the in-flight counters are back to 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from benchmarks.cluster_procs import wait_http_ok
from tests.faults.conftest import gateway_log
from tests.faults.harness import (
    MODEL,
    Gateway,
    SimEngine,
    assert_invariants,
    metric_sum,
    poll,
)
from tests.faults.test_engine_faults import busy_engine, stream_events

# ~6,000 tokens: one prefill takes ~11 s of wall time at time scale 0.002 ("tiny-cpu": 22 ms
# simulated), a decoded token ~0.5 s, so a kill lands in the middle of either
LONG_PROMPT = "prefill takes a while here " * 370
TIME_SCALE = 0.002


def nixl(role: str) -> tuple[str, ...]:
    return ("--kv-transfer-config",
            json.dumps({"kv_connector": "NixlConnector", "kv_role": role}))


@dataclass
class PDGateway(Gateway):
    """``llmserve run`` with ``import_path: llmserve.llm:build_pd_openai_app``."""

    prefill_urls: tuple[str, ...] = ()

    def start(self, wait_healthy: bool = True) -> PDGateway:
        config = self.log_path.with_name("pd.json")
        config.write_text(json.dumps({"applications": [{
            "name": "pd", "route_prefix": "/",
            "import_path": "llmserve.llm:build_pd_openai_app",
            "args": {"prefill_worker_urls": list(self.prefill_urls),
                     "decode_worker_urls": list(self.worker_urls),
                     "worker_engine": "sim",
                     "prefill_routing_config": {"policy": "round_robin"}}}]}))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmserve.cli", "run", str(config), "--port",
                 str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_http_ok(f"{self.url}/health", 60, self.proc)
        return self

    def pd_in_flight(self) -> float:
        return metric_sum(self.metrics(), "llmserve_pd_requests_in_flight")


@pytest.fixture
def pd(model_dir: str, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[tuple[PDGateway, list[SimEngine], list[SimEngine]]]:
    prefill = [SimEngine(model_dir, TIME_SCALE, extra=nixl("kv_producer")).start(wait=False)
               for _ in range(2)]
    decode = [SimEngine(model_dir, TIME_SCALE, extra=nixl("kv_consumer")).start(wait=False)
              for _ in range(2)]
    for engine in prefill + decode:
        wait_http_ok(f"{engine.url}/health", 60, engine.proc)
    gateway = PDGateway([e.url for e in decode], gateway_log(tmp_path_factory),
                        prefill_urls=tuple(e.url for e in prefill))
    try:
        gateway.start()
        yield gateway, prefill, decode
    finally:
        gateway.stop()
        for engine in prefill + decode:
            engine.stop()


def settled(gateway: PDGateway, engines: list[SimEngine], fds: int) -> None:
    assert_invariants(gateway, engines, fds)
    poll(lambda: gateway.pd_in_flight() == 0, 10, "P/D in-flight back to 0")


def ask(gateway: PDGateway, max_tokens: int = 4) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/completions", timeout=60, json={
        "model": MODEL, "prompt": LONG_PROMPT, "max_tokens": max_tokens, "ignore_eos": True})


def test_prefill_replica_dying_mid_prefill_is_retried_on_another(
        pd: tuple[PDGateway, list[SimEngine], list[SimEngine]]) -> None:
    gateway, prefill, decode = pd
    fds = gateway.open_fds()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(ask, gateway)
        victim = busy_engine(prefill)
        assert all(e.busy() == 0 for e in decode)  # still prefilling
        victim.kill()
        response = answer.result(timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4
    survivor = next(e for e in prefill if e is not victim)
    done = metric_sum(httpx.get(f"{survivor.url}/metrics").text, "vllm:request_success_total")
    assert done == 1  # the prefill started over there
    hits = sum(metric_sum(httpx.get(f"{e.url}/metrics").text,
                          "vllm:external_prefix_cache_hits_total") for e in decode)
    assert hits == response.json()["usage"]["prompt_tokens"] - 1  # the decode loaded its KV
    text = gateway.metrics()
    assert metric_sum(text, "llmserve_pd_prefill_retries_total") == 1
    assert metric_sum(text, "llmserve_pd_requests_total", 'outcome="ok"') == 1
    settled(gateway, prefill + decode, fds)


def test_every_prefill_replica_dying_is_a_clear_502(
        pd: tuple[PDGateway, list[SimEngine], list[SimEngine]]) -> None:
    gateway, prefill, decode = pd
    fds = gateway.open_fds()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(ask, gateway)
        first = busy_engine(prefill)
        first.kill()
        second = busy_engine([e for e in prefill if e is not first])
        second.kill()
        response = answer.result(timeout=60)
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_gateway" and "prefill" in error["message"]
    assert metric_sum(gateway.metrics(), "llmserve_pd_requests_total",
                      'outcome="prefill_error"') == 1
    assert_invariants_without_health(gateway, decode, fds)


def assert_invariants_without_health(gateway: PDGateway, decode: list[SimEngine],
                                     fds: int) -> None:
    """With no prefill replica left the model is unhealthy; the rest must hold."""
    poll(lambda: gateway.in_flight() == 0, 10, "gateway in-flight back to 0")
    poll(lambda: gateway.pd_in_flight() == 0, 10, "P/D in-flight back to 0")
    for engine in decode:
        assert engine.busy() == 0
    poll(lambda: gateway.open_fds() <= fds + 2 * 4 + 2, 10, "no growth of open fds")
    assert "Traceback" not in gateway.log(), gateway.log()[-4000:]


def test_decode_replica_dying_mid_stream_ends_it_with_an_error_event(
        pd: tuple[PDGateway, list[SimEngine], list[SimEngine]]) -> None:
    gateway, prefill, decode = pd
    fds = gateway.open_fds()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 300, "ignore_eos": True}
    with ThreadPoolExecutor(1) as pool:
        got = pool.submit(stream_events, gateway, body)
        victim = busy_engine(decode)
        poll(lambda: metric_sum(httpx.get(f"{victim.url}/metrics").text,
                                "vllm:generation_tokens_total") >= 3, 30, "tokens out")
        started_s = time.monotonic()
        victim.kill()
        events = got.result(timeout=30)
    assert time.monotonic() - started_s < 10  # ended at once, not by a timeout
    assert events[-1] == "[DONE]"
    error = events[-2]
    assert isinstance(error, dict) and error["error"]["code"] == "bad_gateway"  # type: ignore[index]
    assert all(isinstance(e, dict) and "choices" in e for e in events[:-2])
    assert len(events) > 3  # some tokens reached the client first
    text = gateway.metrics()
    assert metric_sum(text, "llmserve_pd_requests_total", 'outcome="decode_error"') == 1
    settled(gateway, prefill + decode, fds)


def test_client_leaving_a_whole_answer_mid_decode_aborts_it(
        pd: tuple[PDGateway, list[SimEngine], list[SimEngine]]) -> None:
    gateway, prefill, decode = pd
    fds = gateway.open_fds()
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 300, "ignore_eos": True}
    with ThreadPoolExecutor(1) as pool:
        # ~150 s of decoding; the client gives up after 4 s
        answer = pool.submit(httpx.post, f"{gateway.url}/v1/completions", json=body,
                             timeout=4)
        busy_engine(decode)
        with pytest.raises(httpx.ReadTimeout):
            answer.result(timeout=30)
    for engine in decode:  # aborted now, not after its 300 tokens
        poll(lambda e=engine: e.busy() == 0, 10, f"decode request aborted on {engine.url}")  # type: ignore[misc]
    assert metric_sum(gateway.metrics(), "llmserve_pd_requests_total",
                      'outcome="client_left"') == 1
    settled(gateway, prefill + decode, fds)
