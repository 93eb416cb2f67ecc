"""`LLMServer.chat` / `completions` / `embeddings`: the OpenAI calls through a handle.

Ray Serve LLM's `LLMServer` offers these for composing deployments
(``handle.options(stream=True).chat.remote(request)``). Each is an async generator, as
Ray's: a streamed request yields its server-sent-event lines (``"data: {...}\\n\\n"``, the
last ``"data: [DONE]\\n\\n"``); a plain request yields one response body (a dict). An
engine error yields the engine's OpenAI error body (a dict with ``"error"``), as Ray
yields an ``ErrorResponse``. The HTTP ingress does not use these: it relays bytes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import httpx

from llmserve.openai.engine_auth import bearer_headers


class _Served(Protocol):
    @property
    def engine_url(self) -> str: ...

    @property
    def served_model_id(self) -> str: ...

    @property
    def engine_api_key(self) -> str | None: ...


def request_body(request: Any, model_id: str) -> dict[str, Any]:
    """A request as a dict: a mapping, or a pydantic model (Ray's request classes)."""
    if hasattr(request, "model_dump"):
        body: dict[str, Any] = dict(request.model_dump(exclude_unset=True))
    elif isinstance(request, Mapping):
        body = dict(request)
    else:
        raise TypeError(f"expected a mapping or a pydantic model, got {type(request).__name__}")
    body.setdefault("model", model_id)
    return body


class OpenAICalls:
    """Mixed into `LLMServer`; the engine's URL comes from the replica."""

    async def chat(self: _Served, request: Any) -> AsyncIterator[Any]:
        async for item in _call(self, "/v1/chat/completions", request):
            yield item

    async def completions(self: _Served, request: Any) -> AsyncIterator[Any]:
        async for item in _call(self, "/v1/completions", request):
            yield item

    async def embeddings(self: _Served, request: Any) -> AsyncIterator[Any]:
        async for item in _call(self, "/v1/embeddings", request):
            yield item


async def _call(server: _Served, path: str, request: Any) -> AsyncIterator[Any]:
    body = request_body(request, server.served_model_id)
    url = server.engine_url + path
    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0), trust_env=False,
                                 headers=bearer_headers(server.engine_api_key)) as client:
        if not body.get("stream"):
            response = await client.post(url, json=body)
            yield response.json()
            return
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                yield json.loads(await response.aread())
                return
            async for line in response.aiter_lines():
                if line:
                    yield line + "\n\n"
