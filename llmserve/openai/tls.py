"""TLS for ``https://`` engine URLs: one verifying client context for every engine call.

The relay's own HTTP client, the stats reads and the tokenizer calls (httpx, created with
``trust_env=False`` so no proxy variables apply) all verify engines' certificates against
the same trust store: ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set (as OpenSSL and httpx
read them), else the system's CA certificates plus certifi's bundle.
"""

from __future__ import annotations

import functools
import os
import ssl

HTTPS_PORT = 443
HTTP_PORT = 80


@functools.cache
def client_ssl_context() -> ssl.SSLContext:
    """A context that verifies engine certificates and host names."""
    cafile = os.environ.get("SSL_CERT_FILE") or None
    capath = os.environ.get("SSL_CERT_DIR") or None
    context = ssl.create_default_context(cafile=cafile, capath=capath)
    if cafile is None and capath is None:
        try:
            import certifi
        except ImportError:  # the system's store only
            return context
        context.load_verify_locations(cafile=certifi.where())
    return context


def default_port(scheme: str) -> int:
    return HTTPS_PORT if scheme == "https" else HTTP_PORT
