"""Ray Serve's model-multiplexing rule, as a routing policy for the benchmark.

Ray Serve routes a request with a ``multiplexed_model_id`` to a replica that already holds
that model id if there is one, else to the least loaded replica (which then loads it).
Here "holds" is the candidate's resident adapters (``Candidate.model_ids``) and "load" is
the same in-flight/engine count llmserve's policies use. No load guard: a hot adapter
stays on its holders however busy they are.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from routing.load import replica_load
from routing.policy import Candidate, PolicyBase, RouteRequest


class RayMultiplexRulePolicy(PolicyBase):
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        adapter = request.lora_adapter
        rand = self._rng.random
        keyed = sorted(((adapter is not None and adapter not in c.model_ids,
                         replica_load(c), rand(), i) for i, c in enumerate(candidates)))
        return [candidates[k[-1]] for k in keyed]
