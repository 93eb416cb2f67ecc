"""Checks on what a client sent, before anything is rendered, routed or forwarded."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llmserve.openai.errors import HeadersTooLarge, InvalidRequest

# Longest accepted x-request-id / x-session-id (they end up in logs and engine headers).
MAX_ID_HEADER_CHARS = 256


def parse_json_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything else, nesting too deep included."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    return payload


def refuse_request_chat_template(payload: Mapping[str, Any]) -> None:
    """A chat template sent with the request is code the server would run: refused, as
    vLLM's server refuses it unless started with ``--trust-request-chat-template``."""
    kwargs = payload.get("chat_template_kwargs")
    if payload.get("chat_template") is not None or (
            isinstance(kwargs, Mapping) and kwargs.get("chat_template") is not None):
        raise InvalidRequest("chat_template is not accepted in requests: the model's own "
                             "chat template is used", param="chat_template")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise InvalidRequest("chat_template_kwargs must be an object",
                             param="chat_template_kwargs")


def check_header_size(raw: Sequence[tuple[bytes, bytes]], limit: int) -> None:
    size = sum(len(name) + len(value) + 4 for name, value in raw)
    if size > limit:
        raise HeadersTooLarge(f"request headers of {size} bytes exceed the limit of "
                              f"{limit} bytes")


def id_header(raw: str | None, name: str) -> str | None:
    """An identifier header's value when it is printable ASCII of sane length, else 400.

    Header values arrive decoded as latin-1, so any byte outside printable ASCII shows
    up here as a character outside ``' '..'~'``."""
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_ID_HEADER_CHARS or not all(" " <= c <= "~" for c in raw):
        raise InvalidRequest(f"the {name} header must be printable ASCII of at most "
                             f"{MAX_ID_HEADER_CHARS} characters", param=name)
    return raw
