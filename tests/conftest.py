"""Test-wide settings."""

from __future__ import annotations

import os

# Ray would otherwise advertise this machine's interface address for its nodes (and our
# engines would bind to it); tests keep every connection on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
