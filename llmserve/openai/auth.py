"""API keys: kept as SHA-256 digests, compared in constant time, never logged."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from llmserve.openai.key_policy import KeyPolicy, plain_policy


class ApiKeys:
    """The accepted keys of one gateway and each one's policy (empty: no authentication)."""

    def __init__(self, policies: Sequence[KeyPolicy] = ()) -> None:
        self.policies = tuple(policies)

    @classmethod
    def plain(cls, keys: Iterable[str]) -> ApiKeys:
        return cls([plain_policy(k, i) for i, k in enumerate(k for k in keys if k)])

    def __bool__(self) -> bool:
        return bool(self.policies)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self.policies)} keys)"

    def match(self, token: bytes) -> KeyPolicy | None:
        """The policy of the key ``token`` is, or None; every key is compared, always."""
        digest = hashlib.sha256(token).digest()
        found: KeyPolicy | None = None
        for policy in self.policies:
            if hmac.compare_digest(digest, policy.digest) and found is None:
                found = policy
        return found


def bearer_token(header: str) -> bytes | None:
    """The token of an ``Authorization: Bearer ...`` value (as the client's bytes)."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    # Starlette decodes header bytes as latin-1: encoding back gives the original bytes.
    return token.encode("latin-1") if token else None
