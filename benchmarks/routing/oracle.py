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
from routing.policy import RoutingPolicy


class GroupOraclePolicy(RoutingPolicy):
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


class HotGroupOraclePolicy(RoutingPolicy):
    """The hot-prefix oracle: knows which requests are the hot group's, and keeps to the
    1.5x-mean load bound the issue sets with the fewest cold prefills.

    The hot group (its system prompt contains ``hot_marker``) is spread over
    ``hot_replicas`` replicas (least in-flight first) and every other group is pinned to
    one of the remaining replicas, in turn. With half the traffic hot on 8 replicas, 3 hot
    replicas carry 1.33x the mean load each, and the cold prefills are one per group plus
    one per hot replica: the fewest any router that respects the bound can pay.
    """

    needs_prompt = True

    def __init__(self, hot_marker: str, tokenizer_dir: str, hot_replicas: int = 3,
                 key_tokens: int = 256) -> None:
        from transformers import AutoTokenizer

        self.hot_marker = hot_marker
        self.hot_replicas = hot_replicas
        self.key_tokens = key_tokens
        self._tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self._home: dict[tuple[int, ...], int] = {}

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        ordered = sorted(candidates, key=lambda c: c.replica_id)
        hot, cold = ordered[: self.hot_replicas], ordered[self.hot_replicas:] or ordered
        key = tuple((request.prompt_token_ids or ())[: self.key_tokens])
        if self.hot_marker in self._tokenizer.decode(list(key)):
            pick = min(hot, key=lambda c: (c.num_ongoing, c.replica_id))
        else:
            pick = cold[self._home.setdefault(key, len(self._home)) % len(cold)]
        return [pick] + [c for c in ordered if c is not pick]
