"""Per-request and per-replica context, read by user code inside a replica."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

# Set by a runtime whose replicas run on several machines: the address other nodes reach
# this replica's node at (servers a replica starts, e.g. an engine, should bind to it).
NODE_IP_ENV = "LLMSERVE_NODE_IP"


@dataclass(slots=True)
class RequestMetadata:
    """What travels with one call across the runtime seam (serialisable). Not changed
    once made (not frozen: a frozen dataclass costs 4x as much to build, once per
    request)."""

    request_id: str
    method_name: str = "__call__"
    multiplexed_model_id: str = ""
    is_streaming: bool = False
    session_key: str | None = None


@dataclass(frozen=True)
class ReplicaContext:
    app_name: str
    deployment: str
    replica_id: str


_request: contextvars.ContextVar[RequestMetadata | None] = contextvars.ContextVar(
    "llmserve_request", default=None
)
_replica: contextvars.ContextVar[ReplicaContext | None] = contextvars.ContextVar(
    "llmserve_replica", default=None
)


def set_request_metadata(meta: RequestMetadata) -> contextvars.Token[RequestMetadata | None]:
    return _request.set(meta)


def set_replica_context(ctx: ReplicaContext) -> contextvars.Token[ReplicaContext | None]:
    return _replica.set(ctx)


def get_multiplexed_model_id() -> str:
    """The model id the current request asked for ("" when none)."""
    meta = _request.get()
    return meta.multiplexed_model_id if meta else ""


def get_request_metadata() -> RequestMetadata | None:
    return _request.get()


def get_replica_context() -> ReplicaContext:
    ctx = _replica.get()
    if ctx is None:
        raise RuntimeError("get_replica_context() called outside a replica")
    return ctx
