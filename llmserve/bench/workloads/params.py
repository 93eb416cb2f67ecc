"""Every workload's parameters in one frozen record (defaults follow vLLM's and SGLang's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkloadParams:
    seed: int = 0
    num_requests: int | None = None  # None: the workload's own default count
    # random (vLLM's --random-*)
    input_len: int = 1024
    output_len: int = 128
    range_ratio: float = 0.0
    # shared-prefix (SGLang's generated-shared-prefix, --gsp-*)
    gsp_num_groups: int = 64
    gsp_prompts_per_group: int = 16
    gsp_system_prompt_len: int = 2048
    gsp_question_len: int = 128
    gsp_output_len: int = 256
    # multi-turn
    mt_num_sessions: int = 32
    mt_turns: int = 5
    mt_system_prompt_len: int = 256
    mt_input_len: int = 128
    mt_output_len: int = 128
    mt_think_time_s: float = 1.0  # mean of an exponential pause between turns
    mt_turns_max: int = 0  # > mt_turns: each session's turns uniform in [mt_turns, this]
    mt_common_prefix_len: int = 0  # tokens every session's system prompt starts with
    # prefix-repetition (vLLM's --prefix-repetition-*)
    pr_prefix_len: int = 256
    pr_suffix_len: int = 256
    pr_num_prefixes: int = 10
    pr_output_len: int = 128
    # lora-mix
    lora_num_adapters: int = 8
    lora_zipf_s: float = 1.0
    lora_prefix: str = "lora-"
    # sharegpt-like
    sharegpt_max_input_len: int = 1024
    sharegpt_max_total_len: int = 2048

    @property
    def default_count(self) -> int:
        return self.num_requests if self.num_requests is not None else 1000
