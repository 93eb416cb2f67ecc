"""Join the Ray cluster's detached controller (starting it when there is none)."""

from __future__ import annotations

from typing import Any

from llmserve.serve.ray.controller_actor import ControllerActor
from llmserve.serve.ray.names import CONTROLLER_NAME, MEMBERSHIP_NAME, NAMESPACE

CONTROLLER_START_TIMEOUT_S = 60.0


def connect_controller() -> tuple[Any, Any, bool]:
    """Join Ray (``RAY_ADDRESS`` or a local one), get or start the detached controller;
    its actor, the membership actor, and whether this call started Ray."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started_ray = False
    if not ray.is_initialized():
        ray.init()
        started_ray = True
    here = ray.get_runtime_context().get_node_id()
    actor: Any = ray.remote(ControllerActor).options(
        name=CONTROLLER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_concurrency=32, num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
    ).remote()
    ray.get(actor.ping.remote(), timeout=CONTROLLER_START_TIMEOUT_S)
    return actor, ray.get_actor(MEMBERSHIP_NAME, NAMESPACE), started_ray


def controller_exists() -> bool:
    """Whether this process's Ray cluster runs a detached controller (a driver that
    exited without `serve.shutdown()` left one)."""
    import ray

    try:
        ray.get_actor(CONTROLLER_NAME, NAMESPACE)
    except ValueError:
        return False
    return True
