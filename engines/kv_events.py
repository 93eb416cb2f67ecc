"""vLLM's KV-cache events on the wire (``vllm/distributed/kv_events.py``, vLLM 0.32).

An engine started with ``kv_events_config={"enable_kv_cache_events": true, "publisher":
"zmq", "endpoint": ..., "replay_endpoint": ..., "topic": ...}`` publishes, once per
scheduler step that changed its prefix cache, a ZMQ PUB message of three frames:
``(topic, seq, payload)``: ``seq`` an 8-byte big-endian counter from 0, ``payload`` a
msgpack-encoded :class:`KVEventBatch` (an array ``[ts, events, data_parallel_rank]``
whose events are maps tagged by ``"type"``: ``BlockStored``, ``BlockRemoved``,
``AllBlocksCleared``). Its ROUTER ``replay_endpoint`` answers a DEALER's
``(b"", start_seq)`` with every buffered ``(b"", topic, seq, payload)`` from
``start_seq`` on, then ``(b"", b"", END_SEQ, b"")``.

The structs below are vLLM's, field for field, so both sides encode the same bytes
(``tests/unit/engines/test_kv_events_vllm.py`` checks it against the installed vLLM).
This module needs ``msgspec`` (the ``kv-events`` extra); it imports no engine.
"""

from __future__ import annotations

from typing import Any

import msgspec

END_SEQ = (-1).to_bytes(8, "big", signed=True)
MEDIUM_GPU = "GPU"

ExternalBlockHash = bytes | int


class BlockStored(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    block_hashes: list[ExternalBlockHash]
    parent_block_hash: ExternalBlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None
    ownership: str | None = None
    session_id: str | None = None


class BlockRemoved(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    block_hashes: list[ExternalBlockHash]
    medium: str | None
    group_idx: int | None = None
    locality: str | None = None
    ownership: str | None = None


class AllBlocksCleared(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[KVEvent]
    data_parallel_rank: int | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(KVEventBatch)

DecodeError = msgspec.DecodeError


def encode_batch(batch: KVEventBatch) -> bytes:
    return _encoder.encode(batch)


def decode_batch(payload: bytes) -> KVEventBatch:
    """The batch in ``payload``; raises :data:`DecodeError` on anything else."""
    return _decoder.decode(payload)


def encode_seq(seq: int) -> bytes:
    return seq.to_bytes(8, "big", signed=seq < 0)


def decode_seq(frame: bytes) -> int:
    if len(frame) != 8:
        raise DecodeError(f"a sequence number is 8 bytes, got {len(frame)}")
    return int.from_bytes(frame, "big", signed=True)


def offset_endpoint_port(endpoint: str, offset: int) -> str:
    """``tcp://host:P`` -> ``tcp://host:P+offset`` (vLLM's rule for data-parallel ranks;
    the simulator's replica ``k`` publishes on ``offset=k``). Port 0 stays 0."""
    if not offset:
        return endpoint
    if endpoint.startswith("inproc://"):
        return f"{endpoint}_dp{offset}"
    if not endpoint.startswith("tcp://") or ":" not in endpoint[len("tcp://"):]:
        raise ValueError(f"cannot offset the port of {endpoint!r}: need tcp://HOST:PORT")
    base, _, port = endpoint.rpartition(":")
    return endpoint if int(port) == 0 else f"{base}:{int(port) + offset}"


def connect_address(endpoint: str, host: str) -> str:
    """Where a subscriber connects for an engine that binds ``endpoint``: a wildcard host
    (``tcp://*:5557``) becomes the engine's ``host``, an IPv4-mapped one
    (``tcp://[::ffff:10.0.0.5]:5557``) its IPv4 address."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:", "tcp://[::]:"):
        if endpoint.startswith(wildcard):
            shown = f"[{host}]" if ":" in host else host
            return f"tcp://{shown}:{endpoint[len(wildcard):]}"
    if endpoint.startswith("tcp://[::ffff:") and "." in endpoint:  # IPv4-mapped: plain IPv4
        address, _, port = endpoint.removeprefix("tcp://[::ffff:").partition("]:")
        return f"tcp://{address}:{port}"
    return endpoint
