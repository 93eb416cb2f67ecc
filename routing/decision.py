"""What a routing decision was, for metrics: did the chosen replica hold the prompt's
longest cached prefix, and if not, which guard moved it elsewhere.

A policy that explains its decisions sets ``last_decision`` in ``choose``; the caller
reads it right after (one decision at a time per policy: ``choose`` is synchronous).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["hit", "miss", "spill", "single", "ranked"]
Guard = Literal["none", "load", "share"]


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """``hit``: the chosen replica holds the longest match; ``miss``: no replica holds
    any of the prompt; ``spill``: a holder existed but ``guard`` marked it full;
    ``single``: one ready replica, nothing to choose; ``ranked``: a policy that does
    not look at prefixes chose.
    ``matched_tokens`` is the longest match on any replica, in prompt tokens."""

    outcome: Outcome
    matched_tokens: int = 0
    guard: Guard = "none"


SINGLE = RoutingDecision("single")
RANKED = RoutingDecision("ranked")

DEPTH_BUCKETS = ((0, "0"), (256, "1-255"), (1024, "256-1023"), (4096, "1024-4095"))
DEEPEST_BUCKET = "4096+"


def depth_bucket(matched_tokens: int) -> str:
    """A bounded label for a prefix depth (tokens): 0, 1-255, 256-1023, 1024-4095, 4096+."""
    if matched_tokens <= 0:
        return "0"
    for upper, label in DEPTH_BUCKETS[1:]:
        if matched_tokens < upper:
            return label
    return DEEPEST_BUCKET
