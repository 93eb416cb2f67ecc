"""The ingress's routes as metric labels: a fixed set of templates, so no label value
comes from client input (every unknown path is the one ``unmatched`` route)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

UNMATCHED = "unmatched"
MODEL_ROUTE = "/v1/models/{model}"
ROUTE_TEMPLATES = frozenset({
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/tokenize", "/detokenize", "/v1/models", MODEL_ROUTE, "/health", "/metrics",
    "/metrics/engines",
})  # fmt: skip


def route_template(path: str) -> str:
    """The template a request path counts under (``unmatched`` when none fits)."""
    if path in ROUTE_TEMPLATES:
        return path
    if path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
        return MODEL_ROUTE
    return UNMATCHED


def app_path(scope: Mapping[str, Any]) -> str:
    """The request's path within its application: without the app's route prefix, which
    the proxy gives as the ASGI ``root_path`` (``serve.run(..., route_prefix="/llm")``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path
