"""The simulator's ``--kv-transfer-config``, checked against what vLLM 0.32 does.

vLLM ignores ``kv_transfer_params`` on an engine without a KV connector, refuses a connector
without a valid ``kv_role`` at start-up, and does not gate requests by role (NIXL acts on each
request's ``kv_transfer_params`` on producer, consumer and ``kv_both`` engines alike).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines.sim import ClusterConfig, SimCluster
from engines.sim.kv_transfer import KVTransferConfig, KVTransferConfigError

MODEL = "sim-tiny"
PROMPT = list(range(3, 403))  # 400 tokens: 25 blocks of 16


def nixl(role: str) -> str:
    return json.dumps({"kv_connector": "NixlConnector", "kv_role": role})


async def complete(http: httpx.AsyncClient, url: str, **extra: Any) -> dict[str, Any]:
    response = await http.post(f"{url}/v1/completions", json={
        "model": MODEL, "prompt": PROMPT, "max_tokens": 2, "ignore_eos": True, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def cluster_config(tokenizer_dir: Path, kv_transfer_config: str | None) -> ClusterConfig:
    return ClusterConfig(model_dir=str(tokenizer_dir), served_model_name=MODEL,
                         kv_blocks=256, kv_transfer_config=kv_transfer_config)


async def test_without_a_connector_kv_transfer_params_are_ignored(
        sim_tokenizer_dir: Path) -> None:
    async with SimCluster(cluster_config(sim_tokenizer_dir, None)) as cluster, \
            httpx.AsyncClient(timeout=30) as http:
        url = cluster.urls[0]
        prefill = await complete(http, url, kv_transfer_params={"do_remote_decode": True})
        assert prefill["kv_transfer_params"] is None
        # a decode request naming another engine's blocks computes its prompt itself
        decode = await complete(http, url, prompt=[7, *PROMPT[1:]], kv_transfer_params={
            "do_remote_prefill": True, "remote_block_ids": list(range(25)),
            "remote_engine_id": "elsewhere", "remote_host": "127.0.0.1", "remote_port": 1})
        assert decode["kv_transfer_params"] is None
        assert decode["usage"]["completion_tokens"] == 2
        assert await external_hits(http, url) == 0


async def external_hits(http: httpx.AsyncClient, url: str) -> float:
    text = (await http.get(f"{url}/metrics")).text
    match = re.search(r"^vllm:external_prefix_cache_hits_total\{[^}]*\} (\S+)$", text, re.M)
    assert match, "vllm:external_prefix_cache_hits_total not in /metrics"
    return float(match.group(1))


async def test_a_decode_loads_the_prompt_minus_its_last_token(sim_tokenizer_dir: Path) -> None:
    config = cluster_config(sim_tokenizer_dir, nixl("kv_both"))
    async with SimCluster(dataclasses.replace(config, num_replicas=2)) as cluster, \
            httpx.AsyncClient(timeout=30) as http:
        prefill_url, decode_url = cluster.urls
        prefill = await complete(http, prefill_url, max_tokens=1,
                                 kv_transfer_params={"do_remote_decode": True})
        await complete(http, decode_url, kv_transfer_params=prefill["kv_transfer_params"])
        assert await external_hits(http, decode_url) == len(PROMPT) - 1
        assert await external_hits(http, prefill_url) == 0


@pytest.mark.parametrize("role", ["kv_producer", "kv_consumer", "kv_both"])
async def test_every_role_prefills_for_a_decode_and_serves_plain_requests(
        sim_tokenizer_dir: Path, role: str) -> None:
    async with SimCluster(cluster_config(sim_tokenizer_dir, nixl(role))) as cluster, \
            httpx.AsyncClient(timeout=30) as http:
        url = cluster.urls[0]
        prefill = await complete(http, url, prompt=[5, *PROMPT[1:]], max_tokens=1,
                                 kv_transfer_params={"do_remote_decode": True})
        params = prefill["kv_transfer_params"]
        assert params["do_remote_prefill"] is True
        assert params["remote_num_tokens"] == len(PROMPT)
        plain = await complete(http, url)
        assert plain["kv_transfer_params"] is None
        assert plain["usage"] == {"prompt_tokens": 400, "completion_tokens": 2,
                                  "total_tokens": 402, "prompt_tokens_details": None}


@pytest.mark.parametrize(("config", "message"), [
    ({"kv_connector": "NixlConnector"}, "Please specify kv_role"),
    ({"kv_connector": "NixlConnector", "kv_role": "kv_reader"}, "Unsupported kv_role"),
    ({"kv_connector": "ExampleConnector", "kv_role": "kv_both"}, "'ExampleConnector' is not"),
    ({"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_ip": "x"}, "does not model"),
    ({"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_buffer_device": "tpu"},
     "kv_buffer_device"),
])
def test_start_up_refuses_what_vllm_refuses(config: dict[str, Any], message: str) -> None:
    with pytest.raises(KVTransferConfigError, match=message):
        KVTransferConfig.from_mapping(config)


def test_command_line_refuses_a_bad_config(sim_tokenizer_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "engines.sim", "--model", str(sim_tokenizer_dir),
                           "--kv-transfer-config", '{"kv_connector": "NixlConnector"}'],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Please specify kv_role" in done.stderr
