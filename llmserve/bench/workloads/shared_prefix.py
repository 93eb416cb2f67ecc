"""``shared-prefix``: SGLang's generated-shared-prefix benchmark.

``gsp_num_groups`` system prompts of ``gsp_system_prompt_len`` tokens, each followed by
``gsp_prompts_per_group`` distinct questions of ``gsp_question_len`` tokens; all prompts
shuffled together (as SGLang does), each asking for ``gsp_output_len`` tokens.
"""

from __future__ import annotations

from llmserve.bench.workloads.base import Session, Turn
from llmserve.bench.workloads.params import WorkloadParams
from llmserve.bench.workloads.text import TextSource


def build(params: WorkloadParams, source: TextSource) -> tuple[Session, ...]:
    sessions = []
    for group in range(params.gsp_num_groups):
        system = source.text(params.gsp_system_prompt_len)
        for index in range(params.gsp_prompts_per_group):
            question = source.text(params.gsp_question_len)
            turn = Turn(question, params.gsp_system_prompt_len + params.gsp_question_len,
                        params.gsp_output_len)
            sessions.append(Session(f"gsp-{group}-{index}", (turn,), system_prompt=system))
    source.rng.shuffle(sessions)
    if params.num_requests is not None:
        sessions = sessions[: params.num_requests]
    return tuple(sessions)
