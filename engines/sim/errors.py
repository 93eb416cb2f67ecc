"""Typed errors, mapped once to OpenAI-format error bodies (as vLLM's server returns them)."""

from __future__ import annotations

from typing import Any


class SimError(Exception):
    status_code = 400
    error_type = "BadRequestError"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(SimError):
    pass


class NotFound(SimError):
    status_code = 404
    error_type = "NotFoundError"


def error_body(message: str, status_code: int, error_type: str, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": error_type, "param": param, "code": status_code}}


def sim_error_body(error: SimError) -> Any:
    return error_body(error.message, error.status_code, error.error_type, error.param)
