from __future__ import annotations

import asyncio

import pytest

from llmserve.serve import multiplexed
from llmserve.serve.multiplex import loaded_model_ids

# Models never evicted are collected with an un-awaited async __del__; that is expected.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine .Model.__del__. was never awaited")


class Model:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def __del__(self) -> None:  # async cleanup, as Ray Serve supports
        self.log.append(f"unload {self.name}")


class Host:
    def __init__(self) -> None:
        self.log: list[str] = []

    @multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> Model:
        self.log.append(f"load {model_id}")
        await asyncio.sleep(0.01)
        return Model(model_id, self.log)


async def test_lru_loads_once_and_evicts_least_recently_used() -> None:
    host = Host()
    a = await host.get_model("a")
    assert await host.get_model("a") is a
    await host.get_model("b")
    await host.get_model("a")  # a is now most recent
    await host.get_model("c")  # evicts b
    assert host.log == ["load a", "load b", "unload b", "load c"]
    assert loaded_model_ids(host) == frozenset({"a", "c"})


async def test_concurrent_loads_of_one_id_are_deduplicated() -> None:
    host = Host()
    models = await asyncio.gather(*(host.get_model("x") for _ in range(5)))
    assert all(m is models[0] for m in models)
    assert host.log == ["load x"]


async def test_empty_model_id_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        await Host().get_model("")
