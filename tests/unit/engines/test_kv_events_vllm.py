"""engines/kv_events.py against the installed vLLM's own event structs: the same bytes."""

from __future__ import annotations

import pytest

from engines import kv_events
from tests.fixtures_engines import vllm_installed

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not vllm_installed(), reason="vLLM is not installed"),
]


def vllm_batch() -> object:
    from vllm.distributed import kv_events as v

    return v.KVEventBatch(ts=12.5, events=[
        v.BlockStored(block_hashes=[b"\x01" * 32, b"\x02" * 32], parent_block_hash=None,
                      token_ids=list(range(32)), block_size=16, lora_id=None, medium="GPU",
                      lora_name=None, group_idx=0),
        v.BlockStored(block_hashes=[7], parent_block_hash=b"\x02" * 32,
                      token_ids=list(range(16)), block_size=16, lora_id=3, medium="GPU",
                      lora_name="sql", extra_keys=[("sql",)], group_idx=0),
        v.BlockRemoved(block_hashes=[b"\x01" * 32], medium="GPU", group_idx=0),
        v.AllBlocksCleared(),
    ], data_parallel_rank=0)


def ours() -> kv_events.KVEventBatch:
    return kv_events.KVEventBatch(ts=12.5, events=[
        kv_events.BlockStored(block_hashes=[b"\x01" * 32, b"\x02" * 32],
                              parent_block_hash=None, token_ids=list(range(32)),
                              block_size=16, lora_id=None, medium="GPU", lora_name=None,
                              group_idx=0),
        kv_events.BlockStored(block_hashes=[7], parent_block_hash=b"\x02" * 32,
                              token_ids=list(range(16)), block_size=16, lora_id=3,
                              medium="GPU", lora_name="sql", extra_keys=[("sql",)],
                              group_idx=0),
        kv_events.BlockRemoved(block_hashes=[b"\x01" * 32], medium="GPU", group_idx=0),
        kv_events.AllBlocksCleared(),
    ], data_parallel_rank=0)


def test_our_encoding_is_vllms_byte_for_byte() -> None:
    import msgspec

    vllm_bytes = msgspec.msgpack.Encoder().encode(vllm_batch())
    assert kv_events.encode_batch(ours()) == vllm_bytes
    assert kv_events.decode_batch(vllm_bytes) == ours()


def test_vllm_decodes_what_we_encode() -> None:
    import msgspec
    from vllm.distributed import kv_events as v

    decoded = msgspec.msgpack.Decoder(v.KVEventBatch).decode(kv_events.encode_batch(ours()))
    assert decoded == vllm_batch()


def test_garbage_is_a_decode_error() -> None:
    with pytest.raises(kv_events.DecodeError):
        kv_events.decode_batch(b"\x93not a batch")
    with pytest.raises(kv_events.DecodeError):
        kv_events.decode_seq(b"\x00")


def test_sequence_numbers_and_endpoints() -> None:
    from vllm.distributed.kv_events import ZmqEventPublisher

    assert kv_events.decode_seq(kv_events.encode_seq(41)) == 41
    assert kv_events.encode_seq(-1) == ZmqEventPublisher.END_SEQ == kv_events.END_SEQ
    for endpoint, k in (("tcp://*:5557", 3), ("tcp://10.0.0.1:6000", 0), ("tcp://*:0", 2)):
        assert kv_events.offset_endpoint_port(endpoint, k) == \
            ZmqEventPublisher.offset_endpoint_port(endpoint, k)
    assert kv_events.connect_address("tcp://*:5557", "10.1.2.3") == "tcp://10.1.2.3:5557"
    assert kv_events.connect_address("tcp://10.0.0.9:1", "x") == "tcp://10.0.0.9:1"


def test_vllms_publisher_binds_the_address_llmserve_gives_it_only() -> None:
    """vLLM binds its PUB socket only on an endpoint with ``*`` or ``::``: the IPv4-mapped
    form llmserve writes binds 127.0.0.1 alone, and a subscriber there gets the events."""
    import time

    import psutil
    import zmq
    from vllm.distributed.kv_events import AllBlocksCleared, KVEventBatch, ZmqEventPublisher

    from llmserve.llm.kv_events_config import with_kv_events

    kwargs, addresses = with_kv_events("vllm", {}, "127.0.0.1", {})
    assert addresses is not None
    config = kwargs["kv_events_config"]
    assert "*" not in config["endpoint"] and "*" not in config["replay_endpoint"]
    publisher = ZmqEventPublisher(0, config["endpoint"], config["replay_endpoint"],
                                  topic=config["topic"])
    sub = zmq.Context.instance().socket(zmq.SUB)
    try:
        ports = [int(a.rsplit(":", 1)[1]) for a in addresses[:2] if a]
        listening = {c.laddr.port: c.laddr.ip for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port in ports}
        assert listening == dict.fromkeys(ports, "127.0.0.1")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(addresses[0])
        deadline = time.monotonic() + 10
        while not sub.poll(50):
            assert time.monotonic() < deadline, "no event reached the subscriber"
            publisher.publish(KVEventBatch(ts=time.time(), events=[AllBlocksCleared()]))
        topic, _, payload = sub.recv_multipart()
        assert topic == config["topic"].encode()
        assert kv_events.decode_batch(payload).events == [kv_events.AllBlocksCleared()]
    finally:
        sub.close(linger=0)
        publisher.shutdown()
