"""API keys: kept as SHA-256 digests, compared in constant time, never logged."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def key_digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class ApiKeys:
    """The accepted keys of one gateway (empty: no authentication)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(key_digest(k.encode()) for k in keys if k)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._digests)} keys)"

    def match(self, token: bytes) -> int | None:
        """The index of the key ``token`` is, or None; every key is compared, always."""
        digest = key_digest(token)
        found: int | None = None
        for index, known in enumerate(self._digests):
            if hmac.compare_digest(digest, known) and found is None:
                found = index
        return found


def bearer_token(header: str) -> bytes | None:
    """The token of an ``Authorization: Bearer ...`` value (as the client's bytes)."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    # Starlette decodes header bytes as latin-1: encoding back gives the original bytes.
    return token.encode("latin-1") if token else None
