"""Test-wide settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Ray would otherwise advertise this machine's interface address for its nodes (and our
# engines would bind to it); tests keep every connection on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# The test process starts and stops hundreds of replicas; freezing the heap at the first
# would keep whatever that test left behind (tests/integration/serve/test_gc_freeze.py turns
# it on in its own subprocesses; the servers other tests start inherit the setting).
os.environ.setdefault("LLMSERVE_FREEZE_GC_ON_STARTUP", "0")


@pytest.fixture
def fresh_serve() -> Iterator[None]:
    """No application before the test, none left after it."""
    from llmserve import serve  # imported late: the settings above come first

    serve.shutdown()
    yield
    serve.shutdown()
