"""A one-line progress bar for ``llmserve bench``: requests done, errors, elapsed time.

Drawn by the caller's thread while the load generator runs on its own (so drawing costs
the measured client nothing); silent when the stream is not a terminal (CI logs, pipes).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

from llmserve.bench.loadgen.records import RequestRecord

WIDTH = 30
TICK_S = 0.5


class ProgressBar:
    def __init__(self, total: int, stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.total = max(total, 0)
        self.stream = stream or sys.stdout
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start_s = time.monotonic()
        self._drawn = False

    def line(self, done: int, errors: int, elapsed_s: float) -> str:
        share = min(done / self.total, 1.0) if self.total else 0.0
        filled = round(share * WIDTH)
        bar = "#" * filled + "." * (WIDTH - filled)
        return (f"[{bar}] {done}/{self.total} requests  {errors} errors  "
                f"{elapsed_s:.1f} s")

    def update(self, records: Sequence[RequestRecord]) -> None:
        """Redraw from the records so far (another thread may still be appending)."""
        if not self.enabled:
            return
        snapshot = list(records)
        errors = sum(1 for record in snapshot if not record.success)
        self.stream.write("\r" + self.line(len(snapshot), errors,
                                           time.monotonic() - self.start_s))
        self.stream.flush()
        self._drawn = True

    def finish(self, records: Sequence[RequestRecord]) -> None:
        self.update(records)
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
