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
    ``lora_adapter`` names the adapter the request runs with, if any; ``cache_salt`` is
    the request's ``cache_salt`` (vLLM mixes it into the first block's hash, so a salted
    prompt shares no cached block with an unsalted or differently salted one).
    """

    request_id: str
    model_id: str = ""
    session_key: str | None = None
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    lora_adapter: str | None = None
    cache_salt: str | None = None


@runtime_checkable
class RoutingPolicy(Protocol):
    """Ranks candidates best first, and hears each request's lifecycle.

    A policy subclasses this protocol and overrides ``choose`` and only the hooks it
    needs; the others are no-ops. Both routers (the serving core's handles and the LLM
    engine pool) drive the hooks through :class:`routing.dispatch.Dispatcher`, in this
    order per request: ``on_routed``, at most one ``on_first_token``, one ``on_finished``.

    ``needs_prompt`` tells the caller to fill ``RouteRequest.prompt_token_ids`` (or
    ``prompt``), which costs a chat-template render and a tokenisation per request.
    """

    needs_prompt: bool = False
    last_decision: RoutingDecision | None = None  # set by choose() if it explains itself

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        """``candidates`` best first (a new list; at least one candidate is given)."""
        ...

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        """The request was sent to ``replica_id``."""
        return None

    def on_first_token(self, request: RouteRequest, replica_id: str) -> None:
        """The replica sent the request's first token (its prompt is computed), or, for a
        call that is not streamed, its whole result."""
        return None

    def on_finished(self, request: RouteRequest, replica_id: str) -> None:
        """The request ended on ``replica_id`` (done, failed or abandoned)."""
        return None

    def on_replicas_changed(self, replica_ids: Sequence[str]) -> None:
        """The replicas requests may be routed to are now ``replica_ids``."""
        return None


PolicyBase = RoutingPolicy  # the name policies written before the hooks moved here use
