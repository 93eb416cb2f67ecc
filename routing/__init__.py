"""Routing policies shared by the serving core and the LLM ingress.

Pure policies over small dataclasses: this package imports nothing from
``llmserve`` or ``engines``.
"""

from __future__ import annotations

from routing.policy import Candidate, RouteRequest, RoutingPolicy
from routing.registry import available_policies, make_policy, register_policy

__all__ = [
    "Candidate",
    "RouteRequest",
    "RoutingPolicy",
    "available_policies",
    "make_policy",
    "register_policy",
]
