"""The load generator: an async OpenAI streaming client, schedules, stats and reports."""

from __future__ import annotations

from llmserve.bench.loadgen.client import CHAT, COMPLETIONS, RequestSpec
from llmserve.bench.loadgen.cpu import FixedCpuMeter, ThreadCpuMeter
from llmserve.bench.loadgen.records import RequestRecord
from llmserve.bench.loadgen.report import build_result, format_summary, write_result
from llmserve.bench.loadgen.runner import LoadConfig, RunResult, run_load
from llmserve.bench.loadgen.stats import parse_goodput, summarize

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "FixedCpuMeter",
    "LoadConfig",
    "RequestRecord",
    "RequestSpec",
    "RunResult",
    "ThreadCpuMeter",
    "build_result",
    "format_summary",
    "parse_goodput",
    "run_load",
    "summarize",
    "write_result",
]
