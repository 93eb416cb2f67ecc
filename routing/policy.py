"""The one policy protocol every routing policy implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from routing.decision import RoutingDecision


@dataclass(frozen=True, slots=True)
class Candidate:
    """A replica the router may send a request to, as seen at decision time."""

    replica_id: str
    num_ongoing: int = 0
    max_ongoing: int = 0
    model_ids: frozenset[str] = frozenset()
    stats: Mapping[str, float] = field(default_factory=dict)

    @property
    def has_capacity(self) -> bool:
        return self.max_ongoing <= 0 or self.num_ongoing < self.max_ongoing


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a policy may know about a request.

    ``prompt_token_ids`` is the prompt as the engine will see it (chat template applied,
    tokenised); ``prompt`` is its text when no tokenizer is available.
    ``lora_adapter`` names the adapter the request runs with, if any.
    """

    request_id: str
    model_id: str = ""
    session_key: str | None = None
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    lora_adapter: str | None = None


@runtime_checkable
class RoutingPolicy(Protocol):
    """Ranks candidates best first. Hooks are optional (see :class:`PolicyBase`)."""

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        ...


class PolicyBase:
    """No-op hooks, so a policy only overrides what it needs.

    ``needs_prompt`` tells the caller to fill ``RouteRequest.prompt_token_ids`` (or
    ``prompt``), which costs a chat-template render and a tokenisation per request.
    """

    needs_prompt = False
    last_decision: RoutingDecision | None = None  # set by choose() if it explains itself

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        raise NotImplementedError

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        return None

    def on_first_token(self, request: RouteRequest, replica_id: str) -> None:
        """The replica sent the request's first token (its prompt is computed)."""
        return None

    def on_finished(self, request: RouteRequest, replica_id: str) -> None:
        return None

    def on_replicas_changed(self, replica_ids: Sequence[str]) -> None:
        return None


def needs_prompt(policy: RoutingPolicy) -> bool:
    """Whether ``policy`` looks at the prompt (so it is worth tokenising)."""
    return bool(getattr(policy, "needs_prompt", False))


def notify_routed(policy: RoutingPolicy, request: RouteRequest, replica_id: str) -> None:
    hook = getattr(policy, "on_routed", None)
    if hook is not None:
        hook(request, replica_id)


def notify_first_token(policy: RoutingPolicy, request: RouteRequest, replica_id: str) -> None:
    hook = getattr(policy, "on_first_token", None)
    if hook is not None:
        hook(request, replica_id)


def notify_finished(policy: RoutingPolicy, request: RouteRequest, replica_id: str) -> None:
    hook = getattr(policy, "on_finished", None)
    if hook is not None:
        hook(request, replica_id)


def notify_replicas_changed(policy: RoutingPolicy, replica_ids: Sequence[str]) -> None:
    hook = getattr(policy, "on_replicas_changed", None)
    if hook is not None:
        hook(replica_ids)
