"""The core's errors cross process boundaries (Ray) intact."""

from __future__ import annotations

import pickle

import pytest

from llmserve.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaDiedError,
    ReplicaUnavailableError,
)
from llmserve.serve.http_errors import http_error_of


def test_back_pressure_error_pickles_with_its_fields() -> None:
    copy = pickle.loads(pickle.dumps(BackPressureError("Busy", 3, retry_after_s=2.0)))
    assert isinstance(copy, BackPressureError)
    assert (copy.deployment, copy.num_queued, copy.retry_after_s) == ("Busy", 3, 2.0)
    assert str(copy) == "deployment 'Busy' is overloaded: 3 requests already queued"


@pytest.mark.parametrize("error", [DeploymentUnavailableError("gone"), ReplicaDiedError("x"),
                                   ReplicaUnavailableError("y")])
def test_the_other_request_errors_pickle_and_map_to_503_unavailable(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
    mapped = http_error_of(copy)
    assert mapped is not None and (mapped.status, mapped.code) == (503, "unavailable")


def test_back_pressure_maps_to_503_overloaded_with_its_retry_after() -> None:
    mapped = http_error_of(BackPressureError("Busy", 0, retry_after_s=2.4))
    assert mapped is not None and (mapped.status, mapped.code) == (503, "overloaded")
    assert (b"retry-after", b"2") in mapped.headers("r1")
    assert (b"x-request-id", b"r1") in mapped.headers("r1")
    assert http_error_of(ValueError("not ours")) is None
