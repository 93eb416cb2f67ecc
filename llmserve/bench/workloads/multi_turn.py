"""``multi-turn``: chat sessions that re-send the whole, growing conversation every turn.

Each session has a system prompt of ``mt_system_prompt_len`` tokens and ``mt_turns`` user
messages of ``mt_input_len`` tokens; the runner appends each assistant reply to the history
and waits an exponential think time (mean ``mt_think_time_s``) before the next turn.
Two options give the shape of vLLM's own multi-turn benchmark
(``benchmarks/multi_turn/generate_multi_turn.json``: 12-18 messages, so 6-9 user turns,
after a 500-token prefix common to every conversation): ``mt_turns_max`` draws each
session's turn count uniformly from ``[mt_turns, mt_turns_max]``, and
``mt_common_prefix_len`` starts every system prompt with the same text.
``num_requests``, when given, caps the sessions at ``num_requests`` over the mean turn
count (whole sessions are kept).
"""

from __future__ import annotations

from llmserve.bench.workloads.base import Session, Turn
from llmserve.bench.workloads.params import WorkloadParams
from llmserve.bench.workloads.text import TextSource


def mean_turns(params: WorkloadParams) -> float:
    return (params.mt_turns + max(params.mt_turns, params.mt_turns_max)) / 2


def build(params: WorkloadParams, source: TextSource) -> tuple[Session, ...]:
    rng = source.rng
    num_sessions = params.mt_num_sessions
    if params.num_requests is not None:
        per_session = max(1.0, mean_turns(params))
        num_sessions = min(num_sessions, max(1, int(params.num_requests // per_session)))
    common = source.text(params.mt_common_prefix_len) if params.mt_common_prefix_len else ""
    system_len = params.mt_system_prompt_len + params.mt_common_prefix_len
    sessions = []
    for index in range(num_sessions):
        system = source.text(params.mt_system_prompt_len)
        if common:
            system = f"{common} {system}"
        count = params.mt_turns
        if params.mt_turns_max > params.mt_turns:
            count = rng.randint(params.mt_turns, params.mt_turns_max)
        turns = []
        for number in range(count):
            think_s = rng.expovariate(1 / params.mt_think_time_s) if (
                number and params.mt_think_time_s > 0) else 0.0
            input_len = params.mt_input_len + (system_len if number == 0 else 0)
            turns.append(Turn(source.text(params.mt_input_len), input_len,
                              params.mt_output_len, think_time_s=think_s))
        sessions.append(Session(f"session-{index}", tuple(turns), system_prompt=system))
    return tuple(sessions)
