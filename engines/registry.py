"""Engines chosen by name; each is imported only when asked for (a lazy string registry)."""

from __future__ import annotations

import importlib

from engines.protocol import Engine

_REGISTRY: dict[str, str] = {
    "vllm": "engines.vllm.engine:VllmEngine",
    "sglang": "engines.sglang.engine:SglangEngine",
    "sim": "engines.vllm.engine:SimEngine",
}


def register_engine(name: str, target: str) -> None:
    """Register ``name`` for a ``"module:Class"`` path."""
    _REGISTRY[name] = target


def available_engines() -> list[str]:
    return sorted(_REGISTRY)


def make_engine(name: str) -> Engine:
    """An engine by registered name, or by a ``"module:Class"`` path."""
    if name in _REGISTRY:
        target = _REGISTRY[name]
    elif ":" in name:
        target = name
    else:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(available_engines())}")
    module_name, _, attr = target.partition(":")
    engine: Engine = getattr(importlib.import_module(module_name), attr)()
    return engine
