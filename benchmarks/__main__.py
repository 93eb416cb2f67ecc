"""``python -m benchmarks``: the load generator (same as ``llmserve bench``)."""

from __future__ import annotations

import sys

from llmserve.bench.cli import bench_main

sys.exit(bench_main())
