"""``multi-turn``: chat sessions that re-send the whole, growing conversation every turn.

Each session has a system prompt of ``mt_system_prompt_len`` tokens and ``mt_turns`` user
messages of ``mt_input_len`` tokens; the runner appends each assistant reply to the history
and waits an exponential think time (mean ``mt_think_time_s``) before the next turn.
``num_requests``, when given, caps the total turns (whole sessions are kept).
"""

from __future__ import annotations

from benchmarks.workloads.base import Session, Turn
from benchmarks.workloads.params import WorkloadParams
from benchmarks.workloads.text import TextSource


def build(params: WorkloadParams, source: TextSource) -> tuple[Session, ...]:
    rng = source.rng
    num_sessions = params.mt_num_sessions
    if params.num_requests is not None:
        num_sessions = min(num_sessions, max(1, params.num_requests // max(1, params.mt_turns)))
    sessions = []
    for index in range(num_sessions):
        system = source.text(params.mt_system_prompt_len)
        turns = []
        for number in range(params.mt_turns):
            think_s = rng.expovariate(1 / params.mt_think_time_s) if (
                number and params.mt_think_time_s > 0) else 0.0
            input_len = params.mt_input_len + (params.mt_system_prompt_len if number == 0 else 0)
            turns.append(Turn(source.text(params.mt_input_len), input_len,
                              params.mt_output_len, think_time_s=think_s))
        sessions.append(Session(f"session-{index}", tuple(turns), system_prompt=system))
    return tuple(sessions)
