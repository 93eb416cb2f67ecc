"""Workloads by name: each builds a deterministic tuple of sessions from a seed."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from llmserve.bench.workloads import (
    lora_mix,
    multi_turn,
    prefix_repetition,
    random_workload,
    shared_prefix,
    sharegpt,
)
from llmserve.bench.workloads.base import Session, Turn, Workload
from llmserve.bench.workloads.params import WorkloadParams
from llmserve.bench.workloads.text import TextSource, TokenCounter, load_counter

Builder = Callable[[WorkloadParams, TextSource], tuple[Session, ...]]

WORKLOADS: dict[str, Builder] = {
    "random": random_workload.build,
    "shared-prefix": shared_prefix.build,
    "multi-turn": multi_turn.build,
    "prefix-repetition": prefix_repetition.build,
    "lora-mix": lora_mix.build,
    "sharegpt": sharegpt.build,
}


def build_workload(name: str, params: WorkloadParams | None = None,
                   tokenizer_dir: str | Path | None = None,
                   counter: TokenCounter | None = None) -> Workload:
    """The same ``(name, params)`` always gives the same sessions."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; known: {sorted(WORKLOADS)}")
    params = params or WorkloadParams()
    source = TextSource(random.Random(params.seed), counter or load_counter(tokenizer_dir))
    return Workload(name, WORKLOADS[name](params, source), {"seed": params.seed})


__all__ = ["WORKLOADS", "Session", "Turn", "Workload", "WorkloadParams", "build_workload"]
