from __future__ import annotations

import asyncio

import pytest

from engines.sim.clock import FakeClock
from engines.sim.engine import EngineConfig, EngineRejected, SimEngine, TimedOutput
from engines.sim.metrics import EngineMetrics
from engines.sim.profiles import get_profile
from engines.sim.request import RequestStatus, SamplingSpec, SimRequest
from engines.sim.time_model import SeqChunk, step_time_s

PROFILE = get_profile("tiny-cpu")


def make_engine(num_blocks: int = 64) -> SimEngine:
    config = EngineConfig(profile=PROFILE, num_blocks=num_blocks, block_size=4)
    return SimEngine(config, FakeClock(), EngineMetrics("m"))


def request(request_id: str, prompt_len: int, max_tokens: int) -> SimRequest:
    return SimRequest(
        request_id=request_id,
        prompt_token_ids=tuple(range(1, prompt_len + 1)),
        sampling=SamplingSpec(max_tokens=max_tokens),
        output_plan=(5, 6),
        block_size=4,
    )


async def collect(engine: SimEngine, req: SimRequest) -> list[TimedOutput]:
    return [item async for item in engine.generate(req)]


def test_token_times_follow_the_time_model_exactly() -> None:
    async def main() -> list[TimedOutput]:
        engine = make_engine()
        engine.start()
        try:
            return await collect(engine, request("a", 10, 3))
        finally:
            await engine.stop()

    outputs = asyncio.run(main())
    prefill = step_time_s(PROFILE, [SeqChunk(10, 0)])
    decode_1 = step_time_s(PROFILE, [SeqChunk(1, 10)])
    decode_2 = step_time_s(PROFILE, [SeqChunk(1, 11)])
    assert [o.output.token_id for o in outputs] == [5, 6, 5]
    assert [o.time_s for o in outputs] == pytest.approx(
        [prefill, prefill + decode_1, prefill + decode_1 + decode_2], rel=1e-12
    )
    assert outputs[-1].output.finish is RequestStatus.FINISHED_LENGTH


def test_consumer_leaving_aborts_the_request() -> None:
    async def main() -> tuple[int, int, float]:
        engine = make_engine()
        engine.start()
        stream = engine.generate(request("a", 10, 1000))
        await anext(stream)
        running_before = engine.num_running
        await stream.aclose()
        abort_count = engine.metrics.request_success["abort"]._value.get()
        await engine.stop()
        return running_before, engine.num_running, abort_count

    assert asyncio.run(main()) == (1, 0, 1.0)


def test_prompt_larger_than_the_cache_is_rejected() -> None:
    async def main() -> None:
        engine = make_engine(num_blocks=3)
        with pytest.raises(EngineRejected):
            engine.submit(request("a", 9, 1))

    asyncio.run(main())

