from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Gateway, SimEngine, start_engines
from tests.fixtures_engines import cached_tiny_model

API_KEY = "k1"
AUTH = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(cached_tiny_model())


@pytest.fixture(scope="module")
def engines(model_dir: str) -> Iterator[list[SimEngine]]:
    """Two slow simulated engines (a long answer takes seconds), each its own process."""
    started = start_engines(model_dir, 2, time_scale=0.05)
    try:
        yield started
    finally:
        for engine in started:
            engine.stop()


def gateway_log(factory: pytest.TempPathFactory) -> Path:
    return factory.mktemp("gateway") / "gateway.log"


@pytest.fixture(scope="module")
def gateway(engines: list[SimEngine], model_dir: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway([e.url for e in engines], gateway_log(tmp_path_factory),
                 args=["--model", model_dir, "--routing", "prefix_aware"],
                 env={"LLMSERVE_API_KEYS": API_KEY})
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()
