"""Continuous batching as vLLM v1's scheduler does it (``vllm/v1/core/sched/scheduler.py``).

Each step: running requests first, in order, each asking for all its
uncomputed tokens within the token budget (chunked prefill); when the cache is
out of blocks the last running request is preempted (blocks freed, progress
reset, pushed to the front of the waiting queue). Then, if nothing was
preempted, waiting requests are admitted in order while the budget, the
``max_num_seqs`` limit, the ``max_loras`` limit and the cache allow, after a
prefix-cache lookup that is counted in the prefix-cache stats.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engines.sim.kv_cache import KVCache, PrefixHit
from engines.sim.lora_slots import LoraSlots
from engines.sim.request import RequestStatus, SimRequest


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 8192
    max_loras: int = 4
    enable_chunked_prefill: bool = True


@dataclass(frozen=True)
class ScheduledChunk:
    request_id: str
    num_new_tokens: int
    num_context_tokens: int


@dataclass(frozen=True)
class StepPlan:
    chunks: tuple[ScheduledChunk, ...] = ()
    preempted: tuple[str, ...] = ()
    lora_loads: int = 0

    @property
    def num_scheduled_tokens(self) -> int:
        return sum(chunk.num_new_tokens for chunk in self.chunks)


@dataclass(frozen=True)
class TokenOutput:
    """A token sampled for a request at the end of a step."""

    request_id: str
    token_id: int | None  # None: the request ended without a new token (abort)
    finish: RequestStatus | None
    num_prompt_tokens: int
    num_cached_prompt_tokens: int
    block_ids: tuple[int, ...] = ()


def no_transfer(num_tokens: int) -> float:
    return 0.0


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        kv_cache: KVCache,
        kv_transfer_time_s: Callable[[int], float] = no_transfer,
    ) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.kv_transfer_time_s = kv_transfer_time_s
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.requests: dict[str, SimRequest] = {}
        self.lora_slots = LoraSlots(config.max_loras)
        self.num_preemptions = 0
        # prompt tokens loaded from prefill engines (vLLM's external prefix-cache hits)
        self.num_external_hit_tokens = 0

    # -- queue management ------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, request: SimRequest) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort(
        self, request_id: str, status: RequestStatus = RequestStatus.FINISHED_ABORTED
    ) -> SimRequest | None:
        """End a request now (client gone, or a stop string seen by the detokenizer)."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self._finish(request, status)
        return request

    def next_kv_ready_s(self) -> float | None:
        """Earliest time a pending KV transfer lands, if any."""
        times = [r.kv_ready_s for r in self.waiting if r.kv_ready_s is not None]
        return min(times) if times else None

    def unload_lora(self, name: str) -> None:
        self.lora_slots = self.lora_slots.without(name)

    # -- one step --------------------------------------------------------------------

    def schedule(self, now_s: float) -> StepPlan:
        budget = self.config.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[str] = []
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if num_new <= 0:
                index += 1
                continue
            if not self._allocate_or_preempt(request, num_new, preempted):
                break
            chunks.append(ScheduledChunk(request.request_id, num_new, request.num_computed_tokens))
            budget -= num_new
            index += 1
        if not preempted:
            chunks += self._admit_waiting(now_s, budget)
        loras = [r.lora.name for r in self.running if r.lora is not None]
        self.lora_slots, lora_loads = self.lora_slots.use(loras)
        return StepPlan(tuple(chunks), tuple(preempted), lora_loads)

    def update(self, plan: StepPlan) -> list[TokenOutput]:
        """Apply a finished step: advance progress and sample for caught-up requests."""
        outputs: list[TokenOutput] = []
        for chunk in plan.chunks:
            request = self.requests.get(chunk.request_id)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue
            request.num_computed_tokens += chunk.num_new_tokens
            if request.num_computed_tokens < request.num_tokens:
                continue
            token_id = request.next_token()
            request.append_output(token_id)
            finish = request.finish_status()
            if finish is None and request.num_tokens >= self.config.max_model_len:
                finish = RequestStatus.FINISHED_LENGTH
            block_ids: tuple[int, ...] = ()
            if finish is not None:
                block_ids = self.kv_cache.block_ids(request.request_id)
                self.running.remove(request)
                self._finish(request, finish)
            outputs.append(
                TokenOutput(
                    request.request_id,
                    token_id,
                    finish,
                    request.num_prompt_tokens,
                    request.num_cached_prompt_tokens,
                    block_ids,
                )
            )
        return outputs

    # -- internals -------------------------------------------------------------------

    def _allocate_or_preempt(self, request: SimRequest, num_new: int, preempted: list[str]) -> bool:
        while not self.kv_cache.allocate(
            request.request_id,
            request.block_hashes,
            request.num_computed_tokens + num_new,
            request.num_tokens,
            source=request,
        ):
            victim = self.running.pop()
            self._preempt(victim)
            preempted.append(victim.request_id)
            if victim is request:
                return False
        return True

    def _preempt(self, request: SimRequest) -> None:
        self.kv_cache.free(request.request_id)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def _admit_waiting(self, now_s: float, budget: int) -> list[ScheduledChunk]:
        chunks: list[ScheduledChunk] = []
        skipped: list[SimRequest] = []
        batch_loras = {r.lora.name for r in self.running if r.lora is not None}
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            if request.status is RequestStatus.WAITING_FOR_REMOTE_KV:
                if request.kv_ready_s is not None and request.kv_ready_s > now_s:
                    skipped.append(self.waiting.popleft())
                    continue
                self._finish_kv_transfer(request)
            lora = request.lora.name if request.lora else None
            if (
                lora is not None
                and lora not in batch_loras
                and len(batch_loras) >= self.config.max_loras
            ):
                skipped.append(self.waiting.popleft())
                continue
            hit = PrefixHit(block_size=self.kv_cache.block_size)
            looked_up = request.num_computed_tokens == 0
            if looked_up:
                hit = self.kv_cache.find_cached_prefix(request.block_hashes, request.num_tokens)
                num_external = self._num_external_tokens(request, hit)
                if num_external > 0:
                    if not self._start_remote_prefill(request, hit, num_external, now_s):
                        break
                    skipped.append(self.waiting.popleft())
                    continue
            num_computed = request.num_computed_tokens + hit.num_tokens
            num_new = request.num_tokens - num_computed
            if not self.config.enable_chunked_prefill and num_new > budget:
                break
            num_new = min(num_new, budget)
            if not self.kv_cache.allocate(
                request.request_id,
                request.block_hashes,
                num_computed + num_new,
                request.num_tokens,
                hit,
                source=request,
            ):
                break
            if looked_up:
                self.kv_cache.record_lookup(
                    request.num_tokens, hit.num_tokens, request.num_preemptions > 0
                )
                if request.num_preemptions == 0:
                    request.num_cached_prompt_tokens = hit.num_tokens
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_computed
            self.running.append(request)
            chunks.append(ScheduledChunk(request.request_id, num_new, num_computed))
            budget -= num_new
            if lora is not None:
                batch_loras.add(lora)
        self.waiting.extendleft(reversed(skipped))
        return chunks

    @staticmethod
    def _num_external_tokens(request: SimRequest, hit: PrefixHit) -> int:
        """Prompt tokens a decode engine pulls from the prefill engine (beyond its own hit)."""
        remote = request.remote_prefill
        if remote is None or request.num_preemptions > 0:
            return 0
        return max(0, min(remote.num_tokens, request.num_prompt_tokens) - hit.num_tokens)

    def _start_remote_prefill(
        self, request: SimRequest, hit: PrefixHit, num_external: int, now_s: float
    ) -> bool:
        """Allocate blocks for KV pulled from a prefill engine and start the transfer."""
        num_computed = hit.num_tokens + num_external
        if not self.kv_cache.allocate(
            request.request_id,
            request.block_hashes,
            num_computed,
            request.num_tokens,
            hit,
            source=request,
        ):
            return False
        self.kv_cache.record_lookup(request.num_tokens, hit.num_tokens, False)
        request.num_cached_prompt_tokens = hit.num_tokens
        request.num_computed_tokens = num_computed
        request.status = RequestStatus.WAITING_FOR_REMOTE_KV
        request.kv_ready_s = now_s + self.kv_transfer_time_s(num_external)
        # the last prompt token is recomputed for its logits (_finish_kv_transfer)
        self.num_external_hit_tokens += min(num_external,
                                            request.num_tokens - 1 - hit.num_tokens)
        return True

    def _finish_kv_transfer(self, request: SimRequest) -> None:
        # As vLLM: with every prompt token loaded, recompute the last one for logits.
        if request.num_computed_tokens >= request.num_tokens:
            request.num_computed_tokens = request.num_tokens - 1
        request.status = RequestStatus.WAITING
        request.kv_ready_s = None

    def _finish(self, request: SimRequest, status: RequestStatus) -> None:
        request.status = status
        self.requests.pop(request.request_id, None)
        self.kv_cache.free(request.request_id)
