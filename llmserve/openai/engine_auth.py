"""Sending each engine its key.

Engines llmserve launches demand a key (`llmserve.llm.engine_secret`); workers given by
URL may too (``--worker-api-key``). The relay sends an endpoint's header, built once per
endpoint; every other call to an engine (LoRA loading, model lists, tokenising, stats)
goes through the directory's shared HTTP client, whose `EngineKeys` adds the header of
the engine at the request's address.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable

import httpx

Origin = tuple[str, str, int]  # scheme, host, port


def bearer_headers(api_key: str | None) -> dict[str, str]:
    """The header an engine's key is sent in ({} without a key)."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def origin_of(url: httpx.URL | str) -> Origin:
    url = httpx.URL(url)
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)


class EngineKeys(httpx.Auth):
    """httpx auth adding ``Authorization`` for the engines it knows a key of."""

    def __init__(self) -> None:
        self._headers: dict[Origin, str] = {}

    def __repr__(self) -> str:
        return f"EngineKeys({len(self._headers)} engines)"

    def set(self, url: str, api_key: str | None) -> None:
        if api_key:
            self._headers[origin_of(url)] = f"Bearer {api_key}"
        else:
            self._headers.pop(origin_of(url), None)

    def replace_all(self, keyed: Iterable[tuple[str, str | None]]) -> None:
        """Exactly these (url, key) pairs from now on."""
        self._headers = {origin_of(url): f"Bearer {key}" for url, key in keyed if key}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        header = self._headers.get(origin_of(request.url))
        if header is not None and "authorization" not in request.headers:
            request.headers["authorization"] = header
        yield request
