"""The oracle of the routing benchmark: an assignment that knows the groups.

A request's group is its first ``key_tokens`` prompt tokens (the shared system prompt
of a shared-prefix group, the opening of a multi-turn session). Each new group goes to
the next replica in turn, every later request of the group to the same replica: perfect
affinity with groups spread evenly, blind to load. Load it into the gateway with
``{"policy": "benchmarks.routing.oracle:GroupOraclePolicy"}``.
"""

from __future__ import annotations

from collections.abc import Sequence

from routing import Candidate, RouteRequest
from routing.policy import PolicyBase


class GroupOraclePolicy(PolicyBase):
    needs_prompt = True

    def __init__(self, key_tokens: int = 256, block_size: int = 16) -> None:
        self.key_tokens = key_tokens
        self.block_size = block_size
        self._home: dict[tuple[int, ...], int] = {}

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        ordered = sorted(candidates, key=lambda c: c.replica_id)
        tokens = request.prompt_token_ids or tuple(ord(c) for c in request.prompt or "")
        key = tuple(tokens[: self.key_tokens])
        home = self._home.setdefault(key, len(self._home)) % len(ordered)
        return ordered[home:] + ordered[:home]
