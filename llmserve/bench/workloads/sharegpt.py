"""``sharegpt``: prompt and output lengths shaped like ShareGPT's, without the download.

Lengths are lognormal with means from the vLLM paper (Kwon et al., SOSP 2023, Fig. 11:
ShareGPT averages 161 input and 338 output tokens); the spreads (sigma) are estimates
that give ShareGPT's long right tail. Samples are filtered as vLLM's ShareGPT loader
does: both lengths >= 4, input < ``sharegpt_max_input_len``, sum < ``sharegpt_max_total_len``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from llmserve.bench.workloads.base import Session, Turn
from llmserve.bench.workloads.params import WorkloadParams
from llmserve.bench.workloads.text import TextSource


@dataclass(frozen=True)
class LogNormal:
    mean: float
    sigma: float

    @property
    def mu(self) -> float:
        return math.log(self.mean) - self.sigma**2 / 2

    def sample(self, rng: random.Random) -> int:
        return max(1, round(rng.lognormvariate(self.mu, self.sigma)))


# name -> (input, output) token-length distributions
LENGTH_TABLE: dict[str, tuple[LogNormal, LogNormal]] = {
    "sharegpt": (LogNormal(mean=161.0, sigma=1.0), LogNormal(mean=338.0, sigma=0.9)),
}


def sample_lengths(rng: random.Random, params: WorkloadParams) -> tuple[int, int]:
    inputs, outputs = LENGTH_TABLE["sharegpt"]
    while True:
        input_len, output_len = inputs.sample(rng), outputs.sample(rng)
        if (input_len >= 4 and output_len >= 4 and input_len < params.sharegpt_max_input_len
                and input_len + output_len < params.sharegpt_max_total_len):
            return input_len, output_len


def build(params: WorkloadParams, source: TextSource) -> tuple[Session, ...]:
    sessions = []
    for index in range(params.default_count):
        input_len, output_len = sample_lengths(source.rng, params)
        turn = Turn(source.text(input_len), input_len, output_len)
        sessions.append(Session(f"sharegpt-{index}", (turn,)))
    return tuple(sessions)
