"""The secret between the gateway and an engine it launches.

An engine takes requests from anyone who reaches its port, so each `LLMServer` replica
gives its engine a key the engine then demands (``Authorization: Bearer <key>``; vLLM and
the simulator on ``/v1/*``, SGLang on all but ``/health`` and ``/metrics``). The replica
makes a random one, kept across restarts of its engine, unless the user set one
(``runtime_env.env_vars.VLLM_API_KEY`` or ``engine_kwargs["api_key"]``). The key reaches
the engine by its environment or an owner-only file, never its command line, and the
ingress by the replica's `EngineEndpointInfo`; it is never logged.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

API_KEY_ENV = "VLLM_API_KEY"
API_KEY_KWARGS = ("api_key", "api-key")


def choose_engine_key(env_vars: Mapping[str, str], engine_kwargs: Mapping[str, Any]) -> str:
    """The user's key if they set one, else a new random one."""
    for name in API_KEY_KWARGS:
        given = engine_kwargs.get(name)
        if given is not None:
            if not isinstance(given, str) or not given:
                raise ValueError(f"engine_kwargs.{name} must be a non-empty string")
            return given
    return env_vars.get(API_KEY_ENV) or secrets.token_urlsafe(32)


def without_key(engine_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``engine_kwargs`` less the key (it goes to the engine another way)."""
    return {k: v for k, v in engine_kwargs.items() if k not in API_KEY_KWARGS}

