"""Schemathesis against the OpenAPI document the gateway serves, over a simulated engine:
no 5xx but the documented ones (502/503/504), every error in OpenAI's format, no hang,
no traceback in the gateway's log, nothing left in flight afterwards."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from llmserve.openai.openapi import ERRORS
from tests.faults.conftest import gateway_log
from tests.faults.harness import Gateway, SimEngine, assert_invariants
from tests.fixtures_engines import cached_tiny_model

KEY = "fuzz-key"
AUTH = {"authorization": f"Bearer {KEY}"}
EXAMPLES_PER_ROUTE = 40  # valid and invalid bodies for five routes: a few hundred cases


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, SimEngine]]:
    model_dir = str(cached_tiny_model())
    engine = SimEngine(model_dir, time_scale=50.0).start()
    gateway = Gateway([engine.url], gateway_log(tmp_path_factory),
                      args=["--model", model_dir], env={"LLMSERVE_API_KEYS": KEY})
    gateway.start()
    try:
        yield gateway, engine
    finally:
        gateway.stop()
        engine.stop()


def operations(gateway: Gateway) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_gateway_answers_every_generated_request_cleanly(
        stack: tuple[Gateway, SimEngine]) -> None:
    gateway, _ = stack
    seen: dict[int, int] = {}
    ops = operations(gateway)
    assert len(ops) == 5
    for operation, mode in itertools.product(ops, schemathesis.GenerationMode):
        if mode is schemathesis.GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # nothing to get wrong in a GET without parameters
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), database=None)
        def answers_cleanly(case: schemathesis.Case) -> None:
            response = case.call(base_url=gateway.url, headers=AUTH, timeout=30)
            status = response.status_code
            seen[status] = seen.get(status, 0) + 1
            assert status == 200 or str(status) in ERRORS, (
                case.path, case.body, status, response.text[:300])
            if status >= 400:
                error = response.json()["error"]
                assert error["message"] and error["type"]

        answers_cleanly()
    print("statuses seen:", dict(sorted(seen.items())))
    assert sum(seen.values()) >= 200
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0  # both kinds reached the gateway
    assert not [s for s in seen if s >= 500]  # nothing failed with only a simulated engine


def test_nothing_left_after_fuzzing(stack: tuple[Gateway, SimEngine]) -> None:
    gateway, engine = stack
    assert_invariants(gateway, [engine], fds_before=gateway.open_fds(),
                      admin_headers=None)
