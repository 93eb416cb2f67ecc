"""Policies chosen by name; optional ones are imported lazily from a string path."""

from __future__ import annotations

import importlib
import inspect
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


def _factory(name: str) -> Any:
    target = _REGISTRY.get(name, name)
    if ":" not in target:
        known = ", ".join(available_policies())
        raise ValueError(f"unknown routing policy {name!r}; known: {known}")
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def policy_accepts(name: str, option: str) -> bool:
    """Whether policy ``name`` takes the keyword ``option`` (e.g. ``block_size``)."""
    try:
        parameters = inspect.signature(_factory(name)).parameters
    except (ValueError, TypeError, ImportError, AttributeError):
        return False
    return option in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def make_policy(name: str, **kwargs: Any) -> RoutingPolicy:
    factory = _factory(name)
    policy: RoutingPolicy = factory(**kwargs)
    return policy
