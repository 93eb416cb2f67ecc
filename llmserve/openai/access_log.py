"""One access-log line per request on the ``llmserve.access`` logger.

Fields (``extra`` on the record; ``--log-format json`` writes them as JSON keys):
request_id, model_name, route, status, ttft_ms (streamed requests), duration_ms,
prompt_tokens, completion_tokens, replica, key_id; with prefill/decode disaggregation
``replica`` is the decode replica and ``prefill_replica`` the prefill replica. ``key_id``
identifies the API key (the first 12 hex digits of its SHA-256); the key itself is never logged.
"""

from __future__ import annotations

import hashlib
import logging
import time

from starlette.requests import Request

from llmserve.openai.relay import Outcome

ACCESS_LOG = logging.getLogger("llmserve.access")


def key_id(authorization: str | None) -> str:
    """A stable identifier of the bearer token, safe to log ('' without one)."""
    if not authorization or not authorization.startswith("Bearer "):
        return ""
    token = authorization.removeprefix("Bearer ").strip()
    return hashlib.sha256(token.encode()).hexdigest()[:12] if token else ""


def log_access(request: Request, request_id: str, model: str, route: str, status: int | str,
               outcome: Outcome | None = None, replica: str = "",
               streamed: bool = False, prefill_replica: str = "") -> None:
    if not ACCESS_LOG.isEnabledFor(logging.INFO):
        return
    arrival_s = getattr(request.state, "arrival_s", None)
    usage = (outcome.usage if outcome is not None else None) or {}
    ttft_ms = None
    if streamed and outcome is not None and outcome.first_chunk_s is not None \
            and arrival_s is not None:
        ttft_ms = round((outcome.first_chunk_s - arrival_s) * 1000, 1)
    duration_ms = round((time.monotonic() - arrival_s) * 1000, 1) if arrival_s else None
    ACCESS_LOG.info(
        "%s %s %s %s", request.method, route, status, model or "-",
        extra={"request_id": request_id, "model_name": model, "route": route,
               "status": status, "ttft_ms": ttft_ms, "duration_ms": duration_ms,
               "prompt_tokens": usage.get("prompt_tokens"),
               "completion_tokens": usage.get("completion_tokens"),
               "replica": replica, "key_id": key_id(request.headers.get("authorization")),
               **({"prefill_replica": prefill_replica} if prefill_replica else {})})
