"""The load generator: an async OpenAI streaming client, schedules, stats and reports."""

from __future__ import annotations

from benchmarks.loadgen.client import CHAT, COMPLETIONS, RequestSpec
from benchmarks.loadgen.cpu import FixedCpuMeter, ThreadCpuMeter
from benchmarks.loadgen.records import RequestRecord
from benchmarks.loadgen.report import build_result, format_summary, write_result
from benchmarks.loadgen.runner import LoadConfig, RunResult, run_load
from benchmarks.loadgen.stats import parse_goodput, summarize

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
