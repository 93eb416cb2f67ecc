"""What a workload hands the load generator: sessions of turns, each turn one request.

A single-request workload yields one-turn sessions. A multi-turn session re-sends the
growing conversation each turn (the runner appends each reply), after a think time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Turn:
    """One request: the new user text (after an optional system prompt) and its output cap."""

    user_text: str
    input_len: int  # tokens of this turn's new text (system prompt included on the 1st turn)
    output_len: int
    think_time_s: float = 0.0  # pause before sending this turn (simulated seconds)


@dataclass(frozen=True)
class Session:
    session_id: str
    turns: tuple[Turn, ...]
    system_prompt: str = ""
    model: str | None = None  # e.g. a LoRA adapter name; None = the run's --model
    arrival_s: float | None = None  # trace timestamp (simulated seconds from the start)
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_multi_turn(self) -> bool:
        return len(self.turns) > 1


@dataclass(frozen=True)
class Workload:
    name: str
    sessions: tuple[Session, ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)
