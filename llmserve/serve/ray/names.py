"""The names of the detached actors the Ray runtime creates (namespace ``llmserve``)."""

from __future__ import annotations

NAMESPACE = "llmserve"
CONTROLLER_NAME = "llmserve_controller"
MEMBERSHIP_NAME = "llmserve_membership"
REPLICA_NAME_PREFIX = "llmserve_replica:"
PROXY_NAME_PREFIX = "llmserve_proxy:"


def replica_actor_name(app_name: str, replica_id: str) -> str:
    """The name of a detached replica actor (in namespace ``llmserve``)."""
    return f"{REPLICA_NAME_PREFIX}{app_name}:{replica_id}"
