"""The ingress's routes as metric labels: a fixed set of templates, so no label value
comes from client input (every unknown path is the one ``unmatched`` route)."""

from __future__ import annotations

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
