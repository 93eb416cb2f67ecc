"""Policies chosen by name; optional ones are imported lazily from a string path."""

from __future__ import annotations

import importlib
from typing import Any

from routing.policy import RoutingPolicy

_REGISTRY: dict[str, str] = {
    "round_robin": "routing.round_robin:RoundRobinPolicy",
    "power_of_two": "routing.power_of_two:PowerOfTwoPolicy",
    "least_loaded": "routing.least_loaded:LeastLoadedPolicy",
    "session_affinity": "routing.session_affinity:SessionAffinityPolicy",
    "prefix_aware": "routing.prefix_aware:PrefixAwarePolicy",
    "scored": "routing.scored:ScoredPolicy",
}


def register_policy(name: str, target: str) -> None:
    """Register ``name`` for a ``"module:attr"`` factory path."""
    _REGISTRY[name] = target


def available_policies() -> list[str]:
    return sorted(_REGISTRY)


def make_policy(name: str, **kwargs: Any) -> RoutingPolicy:
    if name not in _REGISTRY:
        if ":" not in name:
            known = ", ".join(available_policies())
            raise ValueError(f"unknown routing policy {name!r}; known: {known}")
        target = name
    else:
        target = _REGISTRY[name]
    module_name, _, attr = target.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    policy: RoutingPolicy = factory(**kwargs)
    return policy
