"""``python -m benchmarks``: the load generator (same as ``llmserve bench``)."""

from __future__ import annotations

import sys

from benchmarks.cli import bench_main

sys.exit(bench_main())
