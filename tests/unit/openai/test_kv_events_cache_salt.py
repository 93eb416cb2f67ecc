"""``cache_salt``: the router hashes a salted prompt as vLLM does, and keys the salted
blocks an engine reports so that only the same salt finds them."""

from __future__ import annotations

import random

import pytest

from engines import kv_events as wire
from engines.sim.event_publisher import to_wire
from engines.sim.kv_cache import KVCache
from engines.sim.request import LoraRef, SamplingSpec, SimRequest
from llmserve.openai.kv_events import apply_batch, first_block_salt
from routing.block_hash import block_hashes
from routing.kv_cache_view import ClusterCacheView
from tests.fixtures_engines import vllm_installed

BS = 16
RID = "replica-0"
TOKENS = [random.Random(3).randrange(32_000) for _ in range(5 * BS)]


def view_after(stored: wire.BlockStored) -> ClusterCacheView:
    view = ClusterCacheView(BS)
    view.set_live(RID, True)
    apply_batch(view, "m", RID, wire.KVEventBatch(0.0, [stored]))
    return view


def depth(view: ClusterCacheView, salt: str | None) -> int:
    return view.match("m", block_hashes(TOKENS, BS, cache_salt=salt)).get(RID, 0)


def sim_stored(salt: str | None, lora: tuple[str, str] | None = None) -> wire.BlockStored:
    """What the simulator's engine publishes after caching TOKENS for such a request."""
    request = SimRequest("r", tuple(TOKENS), SamplingSpec(1), (1,), BS,
                         lora=LoraRef(*lora) if lora else None, cache_salt=salt)
    cache = KVCache(64, BS, True, record_events=True)
    assert cache.allocate("r", request.block_hashes, len(TOKENS), len(TOKENS),
                          source=request)
    [event] = cache.take_events()
    stored = to_wire(event)
    assert isinstance(stored, wire.BlockStored)
    return stored


def test_salted_blocks_match_only_the_same_salt() -> None:
    view = view_after(sim_stored("s1"))
    assert depth(view, "s1") == 5
    assert depth(view, None) == 0
    assert depth(view, "s2") == 0
    unsalted = view_after(sim_stored(None))
    assert depth(unsalted, None) == 5 and depth(unsalted, "s1") == 0


def test_the_salt_is_read_after_the_lora_name() -> None:
    stored = sim_stored("s1", ("adapter", "/adapters/a"))
    assert stored.extra_keys is not None and stored.extra_keys[0] == ("adapter", "s1")
    assert first_block_salt(stored) == "s1"
    assert first_block_salt(sim_stored(None, ("adapter", "/a"))) is None
    assert first_block_salt(sim_stored(None)) is None


def test_a_salt_changes_every_block_key() -> None:
    salted, plain = block_hashes(TOKENS, BS, cache_salt="s"), block_hashes(TOKENS, BS)
    assert len(salted) == len(plain) == 5
    assert not set(salted) & set(plain)
    assert block_hashes(TOKENS, BS, cache_salt="") == plain  # vLLM: an empty salt is none


vllm_only = pytest.mark.skipif(not vllm_installed(), reason="vLLM is not installed")


@pytest.mark.vllm
@vllm_only
@pytest.mark.parametrize("salt", ["tenant-a", None])
def test_same_hashes_as_vllm_for_a_salted_request(salt: str | None) -> None:
    from vllm import SamplingParams
    from vllm.utils.hashing import sha256_cbor
    from vllm.v1.core import kv_cache_utils
    from vllm.v1.request import Request

    kv_cache_utils.init_none_hash(sha256_cbor)
    hasher = kv_cache_utils.get_request_block_hasher(BS, sha256_cbor)
    request = Request("r", TOKENS, SamplingParams(max_tokens=1), None, cache_salt=salt,
                      block_hasher=hasher)
    ours = block_hashes(TOKENS, BS, hash_fn=sha256_cbor, root=kv_cache_utils.NONE_HASH,
                        cache_salt=salt)
    assert [bytes(h) for h in ours] == [bytes(h) for h in request.block_hashes]  # type: ignore[arg-type]


@pytest.mark.vllm
@vllm_only
def test_vllms_event_extra_keys_carry_the_salt_we_read() -> None:
    """vLLM's own extra keys of a salted (and LoRA) request's first block, converted as
    its block pool publishes them, give back the salt."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.v1.core import kv_cache_utils
    from vllm.v1.request import Request

    request = Request("r", TOKENS, SamplingParams(max_tokens=1), None, cache_salt="t-1",
                      lora_request=LoRARequest("adapter", 1, "/adapters/a"))
    first, _ = kv_cache_utils.generate_block_hash_extra_keys(request, 0, BS, 0)
    second, _ = kv_cache_utils.generate_block_hash_extra_keys(request, BS, 2 * BS, 0)
    extra = kv_cache_utils.to_event_extra_keys([first, second])
    stored = wire.BlockStored(block_hashes=[1, 2], parent_block_hash=None,
                              token_ids=TOKENS[:2 * BS], block_size=BS, lora_id=1,
                              medium=wire.MEDIUM_GPU, lora_name="adapter", extra_keys=extra)
    assert first_block_salt(stored) == "t-1"
