"""A request as the simulated engine core sees it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from engines.sim.kv_cache import BlockHash, extend_block_hashes


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    WAITING_FOR_REMOTE_KV = "waiting_for_remote_kv"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def is_finished(self) -> bool:
        return self in (
            RequestStatus.FINISHED_STOPPED,
            RequestStatus.FINISHED_LENGTH,
            RequestStatus.FINISHED_ABORTED,
        )


@dataclass(frozen=True)
class LoraRef:
    name: str
    path: str


@dataclass(frozen=True)
class SamplingSpec:
    """What decides when generation ends."""

    max_tokens: int
    eos_token_id: int | None = None
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    min_tokens: int = 0


@dataclass(frozen=True)
class RemotePrefill:
    """KV of ``num_tokens`` prompt tokens to pull from a prefill engine before decoding."""

    num_tokens: int
    params: dict[str, object] = field(default_factory=dict, hash=False, compare=False)


@dataclass(eq=False)
class SimRequest:
    """Mutable per-request state owned by the scheduler (like vLLM's ``Request``)."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingSpec
    output_plan: tuple[int, ...]
    block_size: int
    arrival_s: float = 0.0
    lora: LoraRef | None = None
    cache_salt: str | None = None
    remote_prefill: RemotePrefill | None = None
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    kv_ready_s: float | None = None
    num_cached_prompt_tokens: int = 0
    block_hashes: list[BlockHash] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rehash()

    @property
    def all_token_ids(self) -> tuple[int, ...]:
        return self.prompt_token_ids + tuple(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def lora_key(self) -> tuple[str, str] | None:
        return (self.lora.name, self.lora.path) if self.lora else None

    def append_output(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self._rehash()

    def next_token(self) -> int:
        """The token this request samples next (its plan is fixed at arrival)."""
        return self.output_plan[len(self.output_token_ids) % len(self.output_plan)]

    def finish_status(self) -> RequestStatus | None:
        """Why generation stops after the last appended token, if it does."""
        num_out = len(self.output_token_ids)
        last = self.output_token_ids[-1] if self.output_token_ids else None
        if num_out >= self.sampling.min_tokens and last is not None:
            if not self.sampling.ignore_eos and last == self.sampling.eos_token_id:
                return RequestStatus.FINISHED_STOPPED
            if last in self.sampling.stop_token_ids:
                return RequestStatus.FINISHED_STOPPED
        if num_out >= self.sampling.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _rehash(self) -> None:
        if self.num_tokens < (len(self.block_hashes) + 1) * self.block_size:
            return
        extend_block_hashes(
            self.block_hashes,
            self.all_token_ids,
            self.block_size,
            self.lora_key,
            self.cache_salt,
        )
