"""The JSON object a simulator flag takes (``--kv-events-config``, ``--kv-transfer-config``),
as vLLM's flags of the same names take it."""

from __future__ import annotations

import json
from typing import Any


def json_object(text: str, flag: str, error: type[Exception]) -> dict[str, Any]:
    """``text`` parsed as a JSON object; ``error`` naming ``flag`` otherwise."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise error(f"{flag} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise error(f"{flag} must be a JSON object")
    return value
