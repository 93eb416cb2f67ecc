"""The polling helper: returns at the first success, fails at its deadline."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.eventually import eventually, eventually_async


def test_returns_the_first_truthy_value_without_waiting_for_the_deadline() -> None:
    counter = itertools.count()
    started = time.monotonic()
    assert eventually(lambda: next(counter) >= 3 and "ready", interval_s=0.001) == "ready"
    assert time.monotonic() - started < 1.0


def test_an_assertion_error_means_not_yet_and_is_reported_at_the_deadline() -> None:
    def check() -> bool:
        assert 1 == 2, "still different"
        return True

    with pytest.raises(AssertionError, match=r"did not hold within 0\.05 s.*still different"):
        eventually(check, timeout_s=0.05, interval_s=0.01)


def test_other_errors_are_not_swallowed() -> None:
    with pytest.raises(ZeroDivisionError):
        eventually(lambda: 1 / 0, timeout_s=1.0)


async def test_async_variant_awaits_coroutine_checks() -> None:
    counter = itertools.count()

    async def check() -> bool:
        return next(counter) >= 2

    assert await eventually_async(check, interval_s=0.001) is True
    with pytest.raises(AssertionError, match="last value: False"):
        await eventually_async(lambda: False, timeout_s=0.03, interval_s=0.01)
