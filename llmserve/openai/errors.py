"""Typed gateway errors, mapped once to OpenAI's error body and HTTP status."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response


class OpenAIError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.code, self.param)


class InvalidRequest(OpenAIError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(OpenAIError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotFound(OpenAIError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class ModelNotAllowed(OpenAIError):
    status_code = 403
    error_type = "permission_error"
    code = "model_not_allowed"


class RequestTimeout(OpenAIError):
    status_code = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class HeadersTooLarge(OpenAIError):
    status_code = 431
    error_type = "invalid_request_error"
    code = "request_headers_too_large"


class NotFound(OpenAIError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class BodyTooLarge(OpenAIError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class Overloaded(OpenAIError):
    status_code = 503
    error_type = "server_error"
    code = "overloaded"


class TooManyRequests(OpenAIError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class EngineUnavailable(OpenAIError):
    status_code = 503
    error_type = "server_error"
    code = "engine_unavailable"


class BadGateway(OpenAIError):
    status_code = 502
    error_type = "server_error"
    code = "bad_gateway"


class UpstreamTimeout(OpenAIError):
    status_code = 504
    error_type = "server_error"
    code = "upstream_timeout"


def error_body(message: str, error_type: str, code: str | None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: OpenAIError, request_id: str) -> Response:
    headers = {"x-request-id": request_id}
    if exc.retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
    return Response(json.dumps(exc.body()), status_code=exc.status_code, headers=headers,
                    media_type="application/json")


def sse_error_event(exc: OpenAIError) -> bytes:
    """An OpenAI-format error as a server-sent event, then the stream terminator."""
    return f"data: {json.dumps(exc.body())}\n\ndata: [DONE]\n\n".encode()
