"""``lora-mix``: random prompts, each sent to one of N LoRA adapters drawn by Zipf.

Adapter ``k`` (0-based) has weight ``1 / (k + 1) ** lora_zipf_s``; the request's ``model``
is the adapter's name, ``f"{lora_prefix}{k}"``. Lengths as the ``random`` workload.
"""

from __future__ import annotations

from llmserve.bench.workloads.base import Session, Turn
from llmserve.bench.workloads.params import WorkloadParams
from llmserve.bench.workloads.random_workload import sample_len
from llmserve.bench.workloads.text import TextSource


def zipf_weights(num_adapters: int, exponent: float) -> list[float]:
    raw = [1 / (rank + 1) ** exponent for rank in range(num_adapters)]
    total = sum(raw)
    return [w / total for w in raw]


def adapter_names(params: WorkloadParams) -> list[str]:
    return [f"{params.lora_prefix}{k}" for k in range(params.lora_num_adapters)]


def build(params: WorkloadParams, source: TextSource) -> tuple[Session, ...]:
    rng = source.rng
    names = adapter_names(params)
    weights = zipf_weights(len(names), params.lora_zipf_s)
    sessions = []
    for index in range(params.default_count):
        input_len = sample_len(rng, params.input_len, params.range_ratio)
        output_len = sample_len(rng, params.output_len, params.range_ratio)
        adapter = rng.choices(names, weights)[0]
        turn = Turn(source.text(input_len), input_len, output_len)
        sessions.append(Session(f"lora-{index}", (turn,), model=adapter))
    return tuple(sessions)
