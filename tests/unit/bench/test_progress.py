"""`llmserve bench`'s progress bar: done, errors, elapsed; silent off a terminal."""

from __future__ import annotations

import io

from llmserve.bench.loadgen.progress import ProgressBar
from llmserve.bench.loadgen.records import RequestRecord


def records(ok: int, failed: int) -> list[RequestRecord]:
    return ([RequestRecord(f"s{i}", status=200) for i in range(ok)]
            + [RequestRecord(f"f{i}", status=503) for i in range(failed)])


def test_the_bar_counts_requests_and_errors() -> None:
    out = io.StringIO()
    bar = ProgressBar(10, out, enabled=True)
    bar.update(records(2, 1))
    bar.finish(records(8, 2))
    first, last = out.getvalue().split("\r")[1:]
    assert "3/10 requests  1 errors" in first
    assert first.startswith("[#########" + "." * 21 + "]")
    assert "10/10 requests  2 errors" in last
    assert last.startswith("[" + "#" * 30 + "]")
    assert last.endswith(" s\n")


def test_silent_when_not_a_terminal() -> None:
    out = io.StringIO()  # isatty() is False
    bar = ProgressBar(10, out)
    bar.update(records(5, 0))
    bar.finish(records(10, 0))
    assert out.getvalue() == ""
