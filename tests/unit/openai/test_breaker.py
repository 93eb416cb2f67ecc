"""Outlier ejection: several failures in a row, a probe to come back, never all ejected."""

from __future__ import annotations

from llmserve.openai.breaker import EJECT_AFTER_FAILURES
from llmserve.openai.pool import make_pool


def test_eject_after_consecutive_failures_readmit_on_probe_never_all() -> None:
    pool = make_pool("m", "sim", {"policy": "round_robin"},
                     urls=["http://a", "http://b", "http://c"])
    a, b, c = pool.endpoints.values()
    for _ in range(EJECT_AFTER_FAILURES - 1):
        pool.note_failure(a, "test")
    pool.note_success(a)  # a success in between resets the count
    for _ in range(EJECT_AFTER_FAILURES - 1):
        pool.note_failure(a, "test")
    assert a.ready
    pool.note_failure(a, "test")
    assert not a.ready
    for _ in range(EJECT_AFTER_FAILURES):
        pool.note_failure(b, "test")
        pool.note_failure(c, "test")
    assert [e.ready for e in (a, b, c)] == [False, False, True]  # the last one stays
    assert pool.is_down  # ... but /health counts the model down
    pool.note_success(a)  # its probe answered
    assert a.ready and not pool.is_down
