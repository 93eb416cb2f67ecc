"""From a deployment's ``ray_actor_options`` to Ray actor options and a placement group.

Pure: no Ray import, so it is unit-tested without a cluster. Keys follow Ray Serve's
``ray_actor_options``; ``placement_group_bundles`` / ``placement_group_strategy`` (Ray
Serve's deployment-level options of the same names) are read from there too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmserve.serve.exceptions import ConfigError

ACTOR_KEYS = {"num_cpus", "num_gpus", "memory", "resources", "accelerator_type", "runtime_env"}
PLACEMENT_KEYS = {"placement_group_bundles", "placement_group_strategy"}
IN_PROXY_KEY = "in_proxy"  # run in the HTTP proxy's process, not in an actor of its own
STRATEGIES = {"PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"}
DEFAULT_NUM_CPUS = 1.0  # as Ray Serve: a replica reserves one CPU unless told otherwise


@dataclass(frozen=True)
class ReplicaPlacement:
    """Where and with what a replica actor runs."""

    actor_options: dict[str, Any]
    bundles: list[dict[str, float]] = field(default_factory=list)
    strategy: str = "PACK"
    in_proxy: bool = False

    @property
    def uses_placement_group(self) -> bool:
        return bool(self.bundles)


def replica_placement(options: Mapping[str, Any] | None) -> ReplicaPlacement:
    """Validate ``ray_actor_options`` and split them into actor options and bundles.

    With bundles, the actor runs in bundle 0: resources it does not name default to that
    bundle's, and those it names must fit in it. ``in_proxy: True`` asks for the replica
    to run in the HTTP proxy's process instead (an ingress that talks HTTP to its
    backends itself); the other keys are still validated.
    """
    opts = dict(options or {})
    known = ACTOR_KEYS | PLACEMENT_KEYS | {IN_PROXY_KEY}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ConfigError(f"unknown ray_actor_options keys: {unknown}; known: {sorted(known)}")
    in_proxy = opts.pop(IN_PROXY_KEY, False)
    if not isinstance(in_proxy, bool):
        raise ConfigError(f"ray_actor_options.{IN_PROXY_KEY} must be true or false")
    bundles = _bundles(opts.pop("placement_group_bundles", None))
    strategy = str(opts.pop("placement_group_strategy", "PACK")).upper()
    if strategy not in STRATEGIES:
        raise ConfigError(f"placement_group_strategy must be one of {sorted(STRATEGIES)}, "
                          f"got {strategy!r}")
    for key in ("num_cpus", "num_gpus", "memory"):
        if key in opts and (not isinstance(opts[key], int | float) or opts[key] < 0):
            raise ConfigError(f"ray_actor_options.{key} must be a number >= 0")
    num_gpus = opts.get("num_gpus", 0)
    if num_gpus > 1 and num_gpus != int(num_gpus):
        raise ConfigError("ray_actor_options.num_gpus above 1 must be a whole number")
    resources = dict(opts.get("resources") or {})
    if {"CPU", "GPU"} & set(resources):
        raise ConfigError("give CPUs and GPUs as num_cpus / num_gpus, not in resources")
    if bundles:
        _fit_in_first_bundle(opts, resources, bundles[0])
    else:
        opts.setdefault("num_cpus", DEFAULT_NUM_CPUS)
    if resources:
        opts["resources"] = resources
    return ReplicaPlacement(opts, bundles, strategy, in_proxy)


def _bundles(value: Any) -> list[dict[str, float]]:
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError("placement_group_bundles must be a non-empty list of dicts")
    bundles: list[dict[str, float]] = []
    for bundle in value:
        if not isinstance(bundle, Mapping) or not bundle:
            raise ConfigError("each placement group bundle must be a non-empty dict, "
                              "e.g. {'GPU': 1, 'CPU': 1}")
        if any(not isinstance(v, int | float) or v < 0 for v in bundle.values()):
            raise ConfigError(f"bundle amounts must be numbers >= 0: {dict(bundle)}")
        bundles.append({str(k): float(v) for k, v in bundle.items()})
    return bundles


def _fit_in_first_bundle(opts: dict[str, Any], resources: dict[str, float],
                         bundle: dict[str, float]) -> None:
    opts.setdefault("num_cpus", bundle.get("CPU", 0.0))
    opts.setdefault("num_gpus", bundle.get("GPU", 0.0))
    wanted = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], **resources}
    if "memory" in opts:
        wanted["memory"] = opts["memory"]
    too_big = {k: v for k, v in wanted.items() if v > bundle.get(k, 0.0)}
    if too_big:
        raise ConfigError(f"the replica actor runs in placement group bundle 0 {bundle}, "
                          f"which does not hold what it asks for: {too_big}")


def placement_group_config_to_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """``LLMConfig.placement_group_config`` ({bundles, strategy}) as ray_actor_options keys."""
    unknown = sorted(set(config) - {"bundles", "strategy"})
    if unknown:
        raise ConfigError(f"unknown placement_group_config keys: {unknown}")
    out: dict[str, Any] = {"placement_group_bundles": list(config.get("bundles") or [])}
    if "strategy" in config:
        out["placement_group_strategy"] = config["strategy"]
    return out


def declared_resources(options: Mapping[str, Any] | None) -> dict[str, float]:
    """What ``ray_actor_options`` ask for, as Ray resource names (no defaults added)."""
    opts = dict(options or {})
    wanted: dict[str, float] = {}
    for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory")):
        if isinstance(opts.get(key), int | float):
            wanted[name] = float(opts[key])
    for name, amount in dict(opts.get("resources") or {}).items():
        if isinstance(amount, int | float):
            wanted[str(name)] = float(amount)
    return wanted
