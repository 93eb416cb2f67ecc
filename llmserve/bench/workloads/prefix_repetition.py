"""``prefix-repetition``: vLLM's prefix-repetition dataset.

``pr_num_prefixes`` prefixes of ``pr_prefix_len`` tokens; each request is one of them plus
a unique suffix of ``pr_suffix_len`` tokens (the count split evenly over the prefixes),
shuffled.
"""

from __future__ import annotations

from llmserve.bench.workloads.base import Session, Turn
from llmserve.bench.workloads.params import WorkloadParams
from llmserve.bench.workloads.text import TextSource


def build(params: WorkloadParams, source: TextSource) -> tuple[Session, ...]:
    total = params.default_count
    num_prefixes = max(1, min(params.pr_num_prefixes, total))
    per_prefix = total // num_prefixes
    sessions = []
    for group in range(num_prefixes):
        prefix = source.text(params.pr_prefix_len)
        count = per_prefix + (1 if group < total - per_prefix * num_prefixes else 0)
        for index in range(count):
            text = f"{prefix} {source.text(params.pr_suffix_len)}"
            turn = Turn(text, params.pr_prefix_len + params.pr_suffix_len, params.pr_output_len)
            sessions.append(Session(f"prefix-{group}-{index}", (turn,)))
    source.rng.shuffle(sessions)
    return tuple(sessions)
