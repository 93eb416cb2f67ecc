"""The simulator's KV-cache events: vLLM's ``ZmqEventPublisher``, on vLLM's wire format.

``--kv-events-config JSON`` takes vLLM's ``KVEventsConfig`` fields (``enable_kv_cache_events``,
``publisher``, ``endpoint``, ``replay_endpoint``, ``buffer_steps``, ``hwm``,
``max_queue_size``, ``topic``). Replica ``k`` of a simulated cluster publishes on the
endpoints' ports + ``k`` (vLLM's rule for data-parallel ranks). Each engine step that
changed the prefix cache publishes one ``KVEventBatch`` (``engines/kv_events.py``) as
``(topic, seq, payload)`` on a PUB socket, and keeps the last ``buffer_steps`` batches for
the ROUTER replay socket, which answers ``(b"", start_seq)`` as vLLM's does. Like vLLM, an
endpoint with a wildcard host (or ``ipc://``/``inproc://``) is bound, any other connected.
The publisher sends from the engine's loop without a queue, so ``max_queue_size`` (the
bound on vLLM's publishing queue) is never reached. Block hashes go out as vLLM sends
them: the low 64 bits as an int, or the 32 sha256 bytes with
``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`` (vLLM's ``maybe_convert_block_hash``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from engines.sim.flag_json import json_object
from engines.sim.kv_cache import CacheEvent, RemovedBlock, StoredBlocks


class KVEventsConfigError(ValueError):
    """A ``--kv-events-config`` the simulator cannot honour."""


@dataclass(frozen=True)
class KVEventsConfig:
    """vLLM's ``KVEventsConfig`` (``vllm/config/kv_events.py``), same names and defaults."""

    enable_kv_cache_events: bool = False
    publisher: str | None = None
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""

    @property
    def enabled(self) -> bool:
        return self.enable_kv_cache_events and self.publisher != "null"

    @classmethod
    def from_json(cls, text: str) -> KVEventsConfig:
        return cls.from_mapping(json_object(text, "--kv-events-config", KVEventsConfigError))

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any]) -> KVEventsConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise KVEventsConfigError(f"--kv-events-config: unknown keys {unknown}; known: "
                             f"{sorted(known)}")
        config = cls(**value)
        publisher = config.publisher or ("zmq" if config.enable_kv_cache_events else "null")
        if publisher not in ("zmq", "null"):
            raise KVEventsConfigError(f"--kv-events-config: publisher {publisher!r} is not 'zmq' "
                             "or 'null'")
        if config.buffer_steps < 0 or config.hwm < 0:
            raise KVEventsConfigError("--kv-events-config: buffer_steps and hwm must be >= 0")
        return replace(config, publisher=publisher)

    def for_replica(self, index: int) -> KVEventsConfig:
        from engines.kv_events import offset_endpoint_port

        replay = self.replay_endpoint
        return replace(self, endpoint=offset_endpoint_port(self.endpoint, index),
                       replay_endpoint=offset_endpoint_port(replay, index) if replay else None)


def _is_bind_endpoint(endpoint: str) -> bool:
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class ZmqEventPublisher:
    """PUB + ROUTER replay, on the running asyncio loop (``start`` / ``close``)."""

    def __init__(self, config: KVEventsConfig) -> None:
        import zmq
        import zmq.asyncio

        from engines import kv_events as wire

        self.config = config
        self._wire = wire
        self._ctx = zmq.asyncio.Context.instance()
        # a plain socket: a non-blocking send needs no loop (and drops when full, like vLLM)
        self._pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        self._pub.set_hwm(config.hwm)
        if _is_bind_endpoint(config.endpoint):
            self._pub.bind(config.endpoint)
        else:
            self._pub.connect(config.endpoint)
        self._replay = None
        if config.replay_endpoint is not None:
            self._replay = self._ctx.socket(zmq.ROUTER)
            self._replay.bind(config.replay_endpoint)
        self._topic = config.topic.encode()
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._seq = 0
        self._int_hashes = os.environ.get("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", "1") != "0"
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def start(self) -> None:
        if self._replay is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve_replay())

    def publish(self, events: Sequence[CacheEvent]) -> None:
        """One batch for one engine step (nothing when the step changed no cache)."""
        if not events:
            return
        wire = self._wire
        batch = wire.KVEventBatch(time.time(), [self._to_wire(e) for e in events], 0)
        payload = wire.encode_batch(batch)
        seq = self._seq
        self._seq += 1
        self._buffer.append((seq, payload))
        with contextlib.suppress(zmq_again()):  # a full PUB queue drops, as vLLM's does
            self._pub.send_multipart((self._topic, wire.encode_seq(seq), payload),
                                     flags=_noblock())
        self.published += 1

    def _to_wire(self, event: CacheEvent) -> Any:
        return to_wire(event, self._int_hashes)

    async def _serve_replay(self) -> None:
        assert self._replay is not None
        wire = self._wire
        while True:
            frames = await self._replay.recv_multipart()
            if len(frames) != 3:
                continue
            client, _, start = frames
            start_seq = int.from_bytes(start, "big")
            for seq, payload in list(self._buffer):
                if seq >= start_seq:
                    await self._replay.send_multipart(
                        (client, b"", self._topic, wire.encode_seq(seq), payload))
            await self._replay.send_multipart((client, b"", b"", wire.END_SEQ, b""))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pub.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)


def zmq_again() -> type[Exception]:
    import zmq

    return zmq.Again


def _noblock() -> int:
    import zmq

    return int(zmq.NOBLOCK)


def to_wire(event: CacheEvent, int_hashes: bool = True) -> Any:
    """``event`` as the ``engines.kv_events`` struct vLLM would publish for it."""
    from engines import kv_events as wire

    def external(block_hash: bytes) -> bytes | int:
        return int.from_bytes(block_hash, "big") & ((1 << 64) - 1) if int_hashes else block_hash

    if isinstance(event, StoredBlocks):
        parent = event.parent_block_hash
        return wire.BlockStored(
            block_hashes=[external(h) for h in event.block_hashes],
            parent_block_hash=None if parent is None else external(parent),
            token_ids=list(event.token_ids),
            block_size=event.block_size,
            lora_id=None,
            medium=wire.MEDIUM_GPU,
            lora_name=event.lora_name,
            extra_keys=list(event.extra_keys),
            group_idx=0,
            kv_cache_spec_kind="full_attention",  # one full-attention KV-cache group
        )
    if isinstance(event, RemovedBlock):
        return wire.BlockRemoved(block_hashes=[external(event.block_hash)],
                                 medium=wire.MEDIUM_GPU, group_idx=0)
    return wire.AllBlocksCleared()
