"""Drive a workload against an OpenAI endpoint: open loop, closed loop or trace replay.

The generator runs its own event loop on its own thread, so its CPU time can be measured
apart from anything else in the process (an in-process simulator or gateway).
Times given in the config (qps, think times, duration) are simulated seconds; with
``time_scale`` X the run proceeds X times faster in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from llmserve.bench.loadgen.client import CHAT, Message, RequestSpec, send
from llmserve.bench.loadgen.cpu import CpuMeter, ThreadCpuMeter
from llmserve.bench.loadgen.progress import TICK_S, ProgressBar
from llmserve.bench.loadgen.records import RequestRecord
from llmserve.bench.loadgen.replica_metrics import COUNTERS, GAUGES, metrics_url, scrape
from llmserve.bench.loadgen.schedule import arrival_times
from llmserve.bench.workloads.base import Session, Workload


@dataclass(frozen=True)
class LoadConfig:
    base_url: str
    model: str
    endpoint: str = CHAT
    qps: float | None = None  # session arrivals per (simulated) second; None = all at once
    concurrency: int | None = None  # most sessions in flight; with qps None: closed loop
    duration_s: float | None = None  # start no session after this (simulated) time
    seed: int = 0
    time_scale: float = 1.0
    ignore_eos: bool = False
    api_key: str | None = None
    metrics_urls: tuple[str, ...] = ()
    request_timeout_s: float = 600.0
    sample_interval_s: float = 1.0  # real seconds between per-replica load samples; 0 = off
    # more ingresses in front of the same engines: requests go round-robin over
    # (base_url, *more_base_urls)
    more_base_urls: tuple[str, ...] = ()

    @property
    def mode(self) -> str:
        return "open-loop" if self.qps is not None else (
            "closed-loop" if self.concurrency else "burst")


@dataclass
class RunResult:
    records: list[RequestRecord]
    duration_s: float  # real seconds, first send to last reply
    client_cpu_s: float
    metrics_before: list[dict[str, float]] = field(default_factory=list)
    metrics_after: list[dict[str, float]] = field(default_factory=list)
    load_samples: list[tuple[float, list[float]]] = field(default_factory=list)

    @property
    def client_cpu_util(self) -> float:
        return self.client_cpu_s / self.duration_s if self.duration_s > 0 else 0.0


class LoadRunner:
    def __init__(self, workload: Workload, config: LoadConfig) -> None:
        self.workload = workload
        self.config = config
        self.records: list[RequestRecord] = []
        self.start = 0.0
        self._stopped = False
        self._base_urls = (config.base_url, *config.more_base_urls)
        self._sent = 0

    def _scaled(self, simulated_s: float) -> float:
        return simulated_s / self.config.time_scale

    def _spec(self, session: Session, turn: int, messages: list[Message]) -> RequestSpec:
        config = self.config
        base_url = self._base_urls[self._sent % len(self._base_urls)]
        self._sent += 1
        return RequestSpec(
            url=base_url.rstrip("/").removesuffix("/v1"), endpoint=config.endpoint,
            model=session.model or config.model, messages=list(messages),
            max_tokens=session.turns[turn].output_len, session_id=session.session_id,
            turn=turn, send_session=session.is_multi_turn, ignore_eos=config.ignore_eos,
            extra_body=session.extra_body, api_key=config.api_key)

    async def run_session(self, http: aiohttp.ClientSession, session: Session) -> None:
        messages: list[Message] = []
        if session.system_prompt:
            messages.append({"role": "system", "content": session.system_prompt})
        for number, turn in enumerate(session.turns):
            if turn.think_time_s > 0:
                await asyncio.sleep(self._scaled(turn.think_time_s))
            messages.append({"role": "user", "content": turn.user_text})
            record = await send(http, self._spec(session, number, messages), self.start)
            if not record.prompt_tokens:
                record.prompt_tokens = sum(t.input_len for t in session.turns[: number + 1])
            self.records.append(record)
            if not record.success:
                return
            messages.append({"role": "assistant", "content": record.generated_text})

    def _past_duration(self) -> bool:
        limit = self.config.duration_s
        return limit is not None and time.perf_counter() - self.start > self._scaled(limit)

    async def _guarded(self, http: aiohttp.ClientSession, session: Session,
                       slots: asyncio.Semaphore | None) -> None:
        async with slots or contextlib.nullcontext():
            if not self._past_duration():
                await self.run_session(http, session)

    async def drive(self, http: aiohttp.ClientSession) -> None:
        config = self.config
        sessions = self.workload.sessions
        qps = config.qps if config.qps is not None else math.inf
        starts = arrival_times(sessions, qps, config.seed)
        slots = asyncio.Semaphore(config.concurrency) if config.concurrency else None
        tasks: list[asyncio.Task[None]] = []
        for session, at_s in zip(sessions, starts, strict=True):
            if config.duration_s is not None and at_s > config.duration_s:
                break
            delay = self.start + self._scaled(at_s) - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._guarded(http, session, slots)))
        await asyncio.gather(*tasks)

    async def sample_load(self, http: aiohttp.ClientSession,
                          samples: list[tuple[float, list[float]]]) -> None:
        urls = [metrics_url(u) for u in self.config.metrics_urls]
        while not self._stopped:
            values = await scrape(http, urls, GAUGES)
            samples.append((time.perf_counter() - self.start,
                            [sum(v.values()) for v in values]))
            await asyncio.sleep(self.config.sample_interval_s)

    async def run(self, meter: CpuMeter) -> RunResult:
        config = self.config
        urls = [metrics_url(u) for u in config.metrics_urls]
        timeout = aiohttp.ClientTimeout(total=None, sock_read=config.request_timeout_s)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         trust_env=False) as http:
            before = await scrape(http, urls, COUNTERS)
            samples: list[tuple[float, list[float]]] = []
            meter.start()
            self.start = time.perf_counter()
            sampler = None
            if urls and config.sample_interval_s > 0:
                sampler = asyncio.create_task(self.sample_load(http, samples))
            await self.drive(http)
            duration = time.perf_counter() - self.start
            cpu_s = meter.stop()
            self._stopped = True
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            after = await scrape(http, urls, COUNTERS)
        self.records.sort(key=lambda r: r.start_s)
        return RunResult(self.records, duration, cpu_s, before, after, samples)


def _new_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run_in_thread(main: Callable[[], Coroutine[Any, Any, RunResult]],
                   tick: Callable[[], None] | None = None) -> RunResult:
    results: list[RunResult] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            with asyncio.Runner(loop_factory=_new_loop_factory()) as runner:
                results.append(runner.run(main()))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="llmserve-bench-loadgen", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(TICK_S if tick is not None else None)
        if tick is not None:
            tick()
    if errors:
        raise errors[0]
    return results[0]


def run_load(workload: Workload, config: LoadConfig, meter: CpuMeter | None = None,
             progress: ProgressBar | None = None) -> RunResult:
    """Run the whole workload; blocks (from async code: ``asyncio.to_thread(run_load, ...)``).
    ``progress`` is redrawn from this thread every ``TICK_S`` while the load runs."""
    runner = LoadRunner(workload, config)
    tick = None if progress is None else lambda: progress.update(runner.records)
    result = _run_in_thread(lambda: runner.run(meter or ThreadCpuMeter()), tick)
    if progress is not None:
        progress.finish(runner.records)
    return result
