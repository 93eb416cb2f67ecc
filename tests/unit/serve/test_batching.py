from __future__ import annotations

import asyncio

import pytest

from llmserve.serve import batch
from llmserve.serve.context import RequestMetadata, get_multiplexed_model_id, set_request_metadata


class Doubler:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    @batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def double(self, xs: list[int]) -> list[object]:
        self.batches.append(list(xs))
        return [ValueError(f"bad {x}") if x < 0 else x * 2 for x in xs]


async def test_callers_get_their_own_results_in_full_batches() -> None:
    d = Doubler()
    results = await asyncio.gather(*(d.double(i) for i in range(6)))
    assert results == [0, 2, 4, 6, 8, 10]
    assert d.batches == [[0, 1, 2, 3], [4, 5]]


async def test_exception_reaches_only_its_caller() -> None:
    d = Doubler()
    outcomes = await asyncio.gather(d.double(1), d.double(-1), d.double(3),
                                    return_exceptions=True)
    assert outcomes[0] == 2 and outcomes[2] == 6
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "bad -1"


async def test_raising_batch_fails_every_caller() -> None:
    class Broken:
        @batch(max_batch_size=3, batch_wait_timeout_s=0.01)
        async def run(self, xs: list[int]) -> list[int]:
            raise RuntimeError("boom")

    b = Broken()
    outcomes = await asyncio.gather(b.run(1), b.run(2), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) and str(o) == "boom" for o in outcomes)


async def test_wrong_result_length_is_reported() -> None:
    class Short:
        @batch(max_batch_size=3, batch_wait_timeout_s=0.01)
        async def run(self, xs: list[int]) -> list[int]:
            return [1]

    s = Short()
    with pytest.raises(TypeError, match="must return a list of 2 results"):
        await asyncio.gather(s.run(1), s.run(2))


async def test_batches_never_mix_model_ids() -> None:
    seen: list[tuple[str, list[int]]] = []

    @batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def run(xs: list[int]) -> list[int]:
        seen.append((get_multiplexed_model_id(), list(xs)))
        return xs

    async def call(x: int, model: str) -> int:
        set_request_metadata(RequestMetadata(f"r{x}", multiplexed_model_id=model))
        return await run(x)

    results = await asyncio.gather(call(1, "a"), call(2, "b"), call(3, "a"), call(4, "b"))
    assert results == [1, 2, 3, 4]
    assert sorted(seen) == [("a", [1, 3]), ("b", [2, 4])]


async def test_streaming_batch_yields_per_caller_and_stops_early() -> None:
    class Streamer:
        @batch(max_batch_size=4, batch_wait_timeout_s=0.05)
        async def count(self, limits: list[int]):  # type: ignore[no-untyped-def]
            for step in range(3):
                yield [step if step < limit else StopIteration for limit in limits]

    s = Streamer()

    async def collect(limit: int) -> list[int]:
        return [x async for x in s.count(limit)]

    assert await asyncio.gather(collect(3), collect(1), collect(2)) == [
        [0, 1, 2], [0], [0, 1]
    ]
