"""A simulated vLLM-like engine server, for measuring routing and scale without GPUs.

Speaks vLLM's OpenAI API and metrics; inside, a vLLM v1-style scheduler and
prefix-caching paged KV cache, timed by a roofline model of a real
model/hardware pair (see :mod:`engines.sim.profiles`).
"""

from __future__ import annotations

from engines.sim.clock import FakeClock, ScaledClock
from engines.sim.cluster import ClusterConfig, SimCluster, start_cluster
from engines.sim.engine import EngineConfig, SimEngine
from engines.sim.profiles import PROFILES, Profile, get_profile
from engines.sim.replica import ReplicaConfig, SimReplica
from engines.sim.server import build_app

__all__ = [
    "PROFILES",
    "ClusterConfig",
    "EngineConfig",
    "FakeClock",
    "Profile",
    "ReplicaConfig",
    "ScaledClock",
    "SimCluster",
    "SimEngine",
    "SimReplica",
    "build_app",
    "get_profile",
    "start_cluster",
]
