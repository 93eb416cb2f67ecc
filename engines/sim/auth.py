"""The API key check of vLLM's OpenAI server (``VLLM_API_KEY`` / ``--api-key``), as vLLM
does it: paths under ``/v1``, ``/v2``, ``/inference`` and ``/cohere`` need
``Authorization: Bearer <key>`` (scheme case-insensitive, the key compared in constant
time); any other path (``/health``, ``/metrics``, ``/tokenize``) and ``OPTIONS`` stay open.
A refused request gets 401 with the body ``{"error": "Unauthorized"}``.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

API_KEY_ENV = "VLLM_API_KEY"
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class ApiKeyCheck:
    """Pure ASGI middleware; ``api_key`` is the one key accepted."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._digest = _digest(api_key)

    def allows(self, headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(_digest(token), self._digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("method") != "OPTIONS":
            path = scope["path"].removeprefix(scope.get("root_path", ""))
            if path.startswith(GUARDED_PREFIXES) and not self.allows(Headers(scope=scope)):
                await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive,
                                                                               send)
                return
        await self.app(scope, receive, send)
