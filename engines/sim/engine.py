"""The async engine loop: schedule a step, sleep its simulated duration, deliver tokens.

The loop never spins: with no work it waits for a request; with work it sleeps
until the step's simulated finish time (or until a pending KV transfer lands).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from engines.sim.clock import Clock
from engines.sim.kv_cache import CacheEvent, KVCache
from engines.sim.metrics import EngineMetrics
from engines.sim.profiles import Profile
from engines.sim.request import RequestStatus, SimRequest
from engines.sim.scheduler import Scheduler, SchedulerConfig, StepPlan, TokenOutput
from engines.sim.time_model import SeqChunk, kv_transfer_time_s, step_time_s


class EngineRejected(ValueError):
    """The request can never run on this engine (e.g. it needs more blocks than exist)."""


@dataclass(frozen=True)
class EngineConfig:
    profile: Profile
    num_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 8192
    max_loras: int = 4
    enable_prefix_caching: bool = True

    @property
    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            max_loras=self.max_loras,
        )


@dataclass(frozen=True)
class TimedOutput:
    output: TokenOutput
    time_s: float


@dataclass
class _Tracking:
    queue: asyncio.Queue[TimedOutput]
    arrival_s: float
    last_token_s: float | None = None


def plan_duration_s(profile: Profile, plan: StepPlan) -> float:
    chunks = [SeqChunk(c.num_new_tokens, c.num_context_tokens) for c in plan.chunks]
    return step_time_s(profile, chunks, plan.lora_loads)


class SimEngine:
    def __init__(self, config: EngineConfig, clock: Clock, metrics: EngineMetrics,
                 publish_events: Callable[[Sequence[CacheEvent]], None] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.kv_cache = KVCache(config.num_blocks, config.block_size, config.enable_prefix_caching,
                                record_events=publish_events is not None)
        self._publish_events = publish_events
        self.scheduler = Scheduler(
            config.scheduler_config,
            self.kv_cache,
            lambda n: kv_transfer_time_s(config.profile, n),
        )
        self._tracking: dict[str, _Tracking] = {}
        self._wake = asyncio.Event()
        self._step_lock = asyncio.Lock()  # held through each step; add_lora runs between
        self._task: asyncio.Task[None] | None = None
        self._reported = self.kv_cache.stats
        self._reported_external = 0
        self.num_steps = 0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- requests --------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return self.scheduler.num_running

    @property
    def num_waiting(self) -> int:
        return self.scheduler.num_waiting

    def submit(
        self, request: SimRequest, queue: asyncio.Queue[TimedOutput] | None = None
    ) -> asyncio.Queue[TimedOutput]:
        """Queue a request; its outputs go to ``queue`` (shared by the ``n`` choices of a call)."""
        needed = -(-request.num_prompt_tokens // self.config.block_size)
        if needed > self.config.num_blocks - 1:
            raise EngineRejected(
                f"prompt of {request.num_prompt_tokens} tokens needs {needed} KV blocks; "
                f"the cache has {self.config.num_blocks - 1}"
            )
        request.arrival_s = self.clock.now()
        self.scheduler.add(request)
        queue = queue if queue is not None else asyncio.Queue()
        self._tracking[request.request_id] = _Tracking(queue, request.arrival_s)
        self._update_gauges()
        self._wake.set()
        return queue

    def abort(
        self, request_id: str, status: RequestStatus = RequestStatus.FINISHED_ABORTED
    ) -> None:
        """End a request early; its consumer gets a final output with ``finish=status``."""
        request = self.scheduler.abort(request_id, status)
        tracking = self._tracking.pop(request_id, None)
        if request is not None:
            self.metrics.request_success[status.value].inc()
            if tracking is not None:
                output = TokenOutput(
                    request_id,
                    None,
                    status,
                    request.num_prompt_tokens,
                    request.num_cached_prompt_tokens,
                )
                tracking.queue.put_nowait(TimedOutput(output, self.clock.now()))
        self._update_gauges()
        self._wake.set()

    async def generate(self, request: SimRequest) -> AsyncIterator[TimedOutput]:
        """Tokens as they are sampled; aborts the request if the consumer goes away."""
        queue = self.submit(request)
        finished = False
        try:
            while not finished:
                item = await queue.get()
                finished = item.output.finish is not None
                yield item
        finally:
            if not finished:
                self.abort(request.request_id)

    # -- the loop --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self.scheduler.has_work:
                await self._wait_for_wake(None)
                continue
            start_s = self.clock.now()
            plan = self.scheduler.schedule(start_s)
            self._observe_schedule(plan)
            if not plan.chunks:
                ready_s = self.scheduler.next_kv_ready_s()
                delay = None if ready_s is None else self.clock.to_wall_s(ready_s - start_s)
                await self._wait_for_wake(delay)
                continue
            duration_s = plan_duration_s(self.config.profile, plan)
            async with self._step_lock:
                await self.clock.sleep(duration_s)
                self.num_steps += 1
                if self._publish_events is not None:  # as vLLM: the step's events, then outputs
                    self._publish_events(self.kv_cache.take_events())
                self._deliver(self.scheduler.update(plan), start_s + duration_s)

    async def add_lora(self) -> None:
        """Read an adapter into host memory (``/v1/load_lora_adapter``): like vLLM's
        engine core, between two steps, so the replica's requests wait meanwhile."""
        async with self._step_lock:
            await self.clock.sleep(self.config.profile.lora_add_s)

    async def _wait_for_wake(self, timeout_wall_s: float | None) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_wall_s)

    def _observe_schedule(self, plan: StepPlan) -> None:
        stats, last = self.kv_cache.stats, self._reported
        self.metrics.prefix_cache_queries.inc(stats.queries - last.queries)
        self.metrics.prefix_cache_hits.inc(stats.hits - last.hits)
        self._reported = stats
        external = self.scheduler.num_external_hit_tokens
        self.metrics.external_prefix_cache_hits.inc(external - self._reported_external)
        self._reported_external = external
        self.metrics.num_preemptions.inc(len(plan.preempted))
        self._update_gauges()

    def _deliver(self, outputs: list[TokenOutput], now_s: float) -> None:
        for output in outputs:
            tracking = self._tracking.get(output.request_id)
            self.metrics.generation_tokens.inc()
            if output.finish is not None:
                self.metrics.request_success[output.finish.value].inc()
                self._tracking.pop(output.request_id, None)
            if tracking is None:
                continue
            if tracking.last_token_s is None:
                self.metrics.prompt_tokens.inc(output.num_prompt_tokens)
                self.metrics.time_to_first_token.observe(now_s - tracking.arrival_s)
            else:
                self.metrics.inter_token_latency.observe(now_s - tracking.last_token_s)
            tracking.last_token_s = now_s
            if output.finish is not None:
                self.metrics.e2e_latency.observe(now_s - tracking.arrival_s)
            tracking.queue.put_nowait(TimedOutput(output, now_s))
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.num_running.set(self.scheduler.num_running)
        self.metrics.num_waiting.set(self.scheduler.num_waiting)
        self.metrics.kv_cache_usage.set(self.kv_cache.usage)
        running = [r.lora.name for r in self.scheduler.running if r.lora]
        waiting = [r.lora.name for r in self.scheduler.waiting if r.lora]
        self.metrics.set_lora_info(running, waiting, self.clock.now())
