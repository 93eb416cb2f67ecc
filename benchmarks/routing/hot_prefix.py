"""``hot-prefix``: shared-prefix groups where one group takes ``hot_share`` of the traffic.

``num_groups`` system prompts of ``system_len`` tokens; ``num_requests`` prompts, a
fraction ``hot_share`` of them from group 0 and the rest spread evenly over the others,
each followed by a distinct ``question_len``-token question; shuffled.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llmserve.bench.workloads import Session, Turn, Workload
from llmserve.bench.workloads.text import TextSource, load_counter


@dataclass(frozen=True)
class HotPrefixParams:
    seed: int = 0
    num_requests: int = 256
    num_groups: int = 16
    hot_share: float = 0.5
    system_len: int = 2048
    question_len: int = 128
    output_len: int = 64


def build(params: HotPrefixParams, tokenizer_dir: str | None) -> Workload:
    source = TextSource(random.Random(params.seed), load_counter(tokenizer_dir))
    systems = [source.text(params.system_len) for _ in range(params.num_groups)]
    groups = group_sequence(params.num_requests, params.num_groups, params.hot_share)
    sessions = []
    for index, group in enumerate(groups):
        turn = Turn(source.text(params.question_len), params.system_len + params.question_len,
                    params.output_len)
        sessions.append(Session(f"hot-{group}-{index}", (turn,), system_prompt=systems[group]))
    source.rng.shuffle(sessions)
    return Workload("hot-prefix", tuple(sessions), {"seed": params.seed})


def group_sequence(num_requests: int, num_groups: int, hot_share: float) -> list[int]:
    """Each request's group, unshuffled: ``hot_share`` of them group 0, the rest spread
    evenly over groups 1..``num_groups - 1``."""
    hot = round(num_requests * hot_share)
    return [0] * hot + [1 + i % (num_groups - 1) for i in range(num_requests - hot)]
