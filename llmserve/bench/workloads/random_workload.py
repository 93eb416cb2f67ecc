"""``random``: independent prompts with uniform lengths around ``input_len``/``output_len``."""

from __future__ import annotations

import random

from llmserve.bench.workloads.base import Session, Turn
from llmserve.bench.workloads.params import WorkloadParams
from llmserve.bench.workloads.text import TextSource


def sample_len(rng: random.Random, mean: int, range_ratio: float) -> int:
    low = max(1, int(mean * (1 - range_ratio)))
    high = max(low, int(mean * (1 + range_ratio)))
    return rng.randint(low, high)


def build(params: WorkloadParams, source: TextSource) -> tuple[Session, ...]:
    rng = source.rng
    sessions = []
    for index in range(params.default_count):
        input_len = sample_len(rng, params.input_len, params.range_ratio)
        output_len = sample_len(rng, params.output_len, params.range_ratio)
        turn = Turn(source.text(input_len), input_len, output_len)
        sessions.append(Session(f"random-{index}", (turn,)))
    return tuple(sessions)
