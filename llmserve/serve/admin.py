"""Access to the operator endpoints (``/-/status``, ``/-/routes``, ``/metrics``).

With ``LLMSERVE_ADMIN_KEY`` set (in the environment of the process serving HTTP), those
endpoints answer only requests carrying ``Authorization: Bearer <that key>``; the key is
kept as a SHA-256 digest and compared in constant time. ``/-/healthz`` stays open for
load balancers' probes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

ADMIN_KEY_ENV = "LLMSERVE_ADMIN_KEY"


def admin_key_digest() -> bytes | None:
    key = os.environ.get(ADMIN_KEY_ENV, "")
    return hashlib.sha256(key.encode()).digest() if key else None


def bearer_matches(digest: bytes, raw_headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in raw_headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return hmac.compare_digest(hashlib.sha256(token.strip()).digest(), digest)
    return False
