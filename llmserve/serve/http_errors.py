"""The core's typed errors as HTTP answers: status, OpenAI-style JSON body, headers.

One mapping for the proxy (errors raised before a replica answers) and for FastAPI /
Starlette ingress apps (errors raised by a handle call inside a route, at any depth of
the graph), so an overloaded deployment is a 503 with ``Retry-After`` wherever it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from llmserve.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaDiedError,
)


@dataclass(frozen=True, slots=True)
class HttpError:
    status: int
    message: str
    code: str
    retry_after_s: float | None = None

    def body(self) -> bytes:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return json.dumps({"error": {"message": self.message, "type": kind, "param": None,
                                     "code": self.code}}).encode()

    def headers(self, request_id: str | None = None) -> list[tuple[bytes, bytes]]:
        found = [(b"content-type", b"application/json")]
        if self.retry_after_s is not None:
            found.append((b"retry-after", str(max(1, round(self.retry_after_s))).encode()))
        if request_id:
            found.append((b"x-request-id", request_id.encode()))
        return found


def http_error_of(exc: BaseException) -> HttpError | None:
    """The answer for one of the core's request errors; None for any other exception."""
    if isinstance(exc, BackPressureError):
        return HttpError(503, str(exc), "overloaded", exc.retry_after_s)
    if isinstance(exc, (DeploymentUnavailableError, ReplicaDiedError)):
        return HttpError(503, str(exc), "unavailable", 1.0)
    return None


# what ingress apps answer by themselves (see llmserve.serve.asgi.install_error_handlers)
REQUEST_ERRORS: tuple[type[Exception], ...] = (
    BackPressureError, DeploymentUnavailableError, ReplicaDiedError)
