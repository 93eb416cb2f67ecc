"""KV events of LoRA requests, as vLLM itself makes and publishes them, against the
gateway's routing index.

vLLM keys a LoRA request's blocks with ``("lora", name, path)`` as extra key and its
``BlockStored`` event names the adapter (``lora_name``). The gateway files the event's
blocks under the adapter (its index key), re-keyed from their tokens, so a LoRA request's
prompt matches what its adapter's KV holds on that engine, and neither the base model's
nor another adapter's. Made with vLLM's own ``BlockPool`` and request block hasher,
published by vLLM's own ``ZmqEventPublisher``, read by the gateway's subscriber.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from llmserve.openai.kv_events import EventSource, KVEventSubscriber
from routing import RouteRequest
from routing.block_hash import block_hashes
from routing.kv_cache_view import ClusterCacheView
from routing.prefix_aware import PrefixAwarePolicy
from tests.e2e.conftest import free_port_run
from tests.fixtures_engines import vllm_installed

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not vllm_installed(), reason="vLLM is not installed"),
]

BS = 16
RID = "replica-0"
TOKENS = [(7 * i + 3) % 30_000 for i in range(5 * BS + 5)]  # five full blocks


def vllm_stored(tokens: list[int], lora: Any) -> tuple[list[Any], list[bytes]]:
    """vLLM's events for caching ``tokens``' full blocks, and its block hashes."""
    from vllm import SamplingParams
    from vllm.utils.hashing import sha256_cbor
    from vllm.v1.core import kv_cache_utils
    from vllm.v1.core.block_pool import BlockPool
    from vllm.v1.request import Request

    kv_cache_utils.init_none_hash(sha256_cbor)
    hasher = kv_cache_utils.get_request_block_hasher(BS, sha256_cbor)
    request = Request("r", tokens, SamplingParams(max_tokens=1), None, lora_request=lora,
                      block_hasher=hasher)
    pool = BlockPool(64, True, BS, enable_kv_cache_events=True)
    full = len(tokens) // BS
    pool.cache_full_blocks(request, pool.get_new_blocks(full), 0, full, BS, 0)
    return pool.take_events(), [bytes(h) for h in request.block_hashes]


def test_vllms_lora_block_hashes_carry_the_adapters_name_and_path() -> None:
    """The engine keeps an adapter's blocks apart from the base model's and from another
    adapter's; ``block_hashes`` computes its exact keys given its extra key."""
    from vllm.lora.request import LoRARequest
    from vllm.utils.hashing import sha256_cbor
    from vllm.v1.core import kv_cache_utils

    sql = LoRARequest("m:sql", 1, "/adapters/sql")
    _, base = vllm_stored(TOKENS, None)
    _, with_sql = vllm_stored(TOKENS, sql)
    _, moved = vllm_stored(TOKENS, LoRARequest("m:sql", 1, "/elsewhere/sql"))
    assert not set(base) & set(with_sql) and not set(with_sql) & set(moved)
    exact = block_hashes(TOKENS, BS, hash_fn=sha256_cbor, root=kv_cache_utils.NONE_HASH,
                         extra_keys=(("lora", sql.lora_name, sql.lora_path),))
    assert [bytes(h) for h in exact] == with_sql  # type: ignore[arg-type]


async def test_a_lora_requests_prompt_matches_its_adapters_blocks_only() -> None:
    from vllm.distributed.kv_events import KVEventBatch, ZmqEventPublisher
    from vllm.lora.request import LoRARequest

    port = free_port_run(2)
    publisher = ZmqEventPublisher(0, f"tcp://*:{port}", f"tcp://*:{port + 1}", topic="t")
    view = ClusterCacheView(BS)
    subscriber = KVEventSubscriber(
        EventSource(RID, f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}", "t"),
        "m", view, Counter(), replay_timeout_s=1.0, retry_s=0.05)
    policy = PrefixAwarePolicy(block_size=BS)
    policy.use_kv_view(view)
    subscriber.start()
    try:
        probe, _ = vllm_stored(list(range(50_000, 50_000 + BS)), None)
        deadline = time.monotonic() + 10
        while not view.held_blocks(RID):  # a PUB drops what precedes the subscription
            assert time.monotonic() < deadline, "the subscriber never received anything"
            publisher.publish(KVEventBatch(ts=time.time(), events=probe))
            await asyncio.sleep(0.05)
        events, _ = vllm_stored(TOKENS, LoRARequest("m:sql", 1, "/adapters/sql"))
        assert events[0].lora_name == "m:sql"
        publisher.publish(KVEventBatch(ts=time.time(), events=events))
        asked = RouteRequest("q", "m", prompt_token_ids=tuple(TOKENS), lora_adapter="m:sql")
        deadline = time.monotonic() + 10
        while (found := policy.match(asked)) is None or found.blocks.get(RID) != 5:
            assert time.monotonic() < deadline, f"no match for the adapter: {found}"
            await asyncio.sleep(0.05)
        for other in (None, "m:other"):
            other_request = RouteRequest("q2", "m", prompt_token_ids=tuple(TOKENS),
                                         lora_adapter=other)
            match = policy.match(other_request)
            assert match is not None and match.blocks == {}, other
    finally:
        await subscriber.close()
        publisher.shutdown()
