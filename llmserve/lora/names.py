"""Adapter names: ``BASE:ADAPTER`` (Ray Serve LLM's convention) and plain static names."""

from __future__ import annotations

import re

from llmserve.lora.errors import InvalidAdapterName

SEPARATOR = ":"
_ALLOWED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+=-]*")
MAX_NAME_CHARS = 255


def public_id(base_model: str, adapter: str) -> str:
    """The id clients use for a discovered adapter: ``BASE:ADAPTER``."""
    return f"{base_model}{SEPARATOR}{adapter}"


def check_adapter_name(name: str) -> str:
    """``name`` if it can only name a folder directly under the adapter folder, else 400."""
    if (len(name) > MAX_NAME_CHARS or ".." in name or "/" in name or "\\" in name
            or not _ALLOWED.fullmatch(name)):
        raise InvalidAdapterName(
            f"invalid LoRA adapter name {name[:80]!r}: use letters, digits and . _ - @ + = "
            "(no path separators, no '..')", param="model")
    return name
