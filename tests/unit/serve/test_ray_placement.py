"""Ray runtime pieces that need no cluster: placement options and the membership broker."""

from __future__ import annotations

import asyncio

import pytest

from llmserve.serve.exceptions import ConfigError
from llmserve.serve.ray.membership import DeploymentView, MembershipActor, ReplicaEntry
from llmserve.serve.ray.placement import (
    placement_group_config_to_options,
    replica_placement,
)


def test_defaults_reserve_one_cpu_like_ray_serve() -> None:
    placement = replica_placement(None)
    assert placement.actor_options == {"num_cpus": 1.0}
    assert not placement.uses_placement_group


def test_actor_options_pass_through() -> None:
    opts = {"num_cpus": 0.5, "num_gpus": 0.25, "memory": 1e9, "resources": {"worker": 1},
            "accelerator_type": "A100", "runtime_env": {"env_vars": {"A": "1"}}}
    assert replica_placement(opts).actor_options == opts


def test_in_proxy_is_split_from_the_actor_options() -> None:
    placement = replica_placement({"in_proxy": True, "num_cpus": 0.1})
    assert placement.in_proxy and placement.actor_options == {"num_cpus": 0.1}
    assert not replica_placement({"num_cpus": 0.1}).in_proxy


@pytest.mark.parametrize("bad, message", [
    ({"num_cpu": 1}, "unknown ray_actor_options keys"),
    ({"in_proxy": "yes"}, "true or false"),
    ({"num_gpus": 1.5}, "whole number"),
    ({"num_gpus": -1}, ">= 0"),
    ({"resources": {"GPU": 1}}, "num_gpus"),
    ({"placement_group_bundles": []}, "non-empty list"),
    ({"placement_group_bundles": [{}]}, "non-empty dict"),
    ({"placement_group_bundles": [{"GPU": 1}], "placement_group_strategy": "TIGHT"},
     "must be one of"),
    ({"num_gpus": 2, "placement_group_bundles": [{"GPU": 1}, {"GPU": 1}]},
     "does not hold"),
])
def test_invalid_options_are_config_errors(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        replica_placement(bad)


def test_bundles_put_the_actor_in_bundle_zero() -> None:
    placement = replica_placement({
        "placement_group_bundles": [{"CPU": 1, "GPU": 1}, {"GPU": 1}],
        "placement_group_strategy": "strict_pack"})
    assert placement.strategy == "STRICT_PACK"
    assert placement.bundles == [{"CPU": 1.0, "GPU": 1.0}, {"GPU": 1.0}]
    assert placement.actor_options == {"num_cpus": 1.0, "num_gpus": 1.0}
    smaller = replica_placement({"num_cpus": 0, "num_gpus": 0.5,
                                 "placement_group_bundles": [{"GPU": 1}]})
    assert smaller.actor_options == {"num_cpus": 0, "num_gpus": 0.5}


def test_llm_placement_group_config_maps_to_actor_options() -> None:
    opts = placement_group_config_to_options({"bundles": [{"GPU": 1}] * 2,
                                              "strategy": "PACK"})
    assert replica_placement(opts).bundles == [{"GPU": 1.0}, {"GPU": 1.0}]
    with pytest.raises(ConfigError):
        placement_group_config_to_options({"bundle": []})


async def test_membership_long_poll_and_load_reports() -> None:
    broker = MembershipActor()
    # a new (or restarted) broker holds no snapshot: it answers nobody until a publish,
    # not even a listener that knows another version
    assert await broker.listen(-1, 0) is None
    assert await broker.listen(7, 0.01) is None
    waiter = asyncio.create_task(broker.listen(7, 5))
    await asyncio.sleep(0)  # the listener is waiting on the next publish
    view = DeploymentView(5, -1, {}, (ReplicaEntry("A#1", object()),))
    await broker.publish(1, {("app", "A"): view})
    version, snapshot = await asyncio.wait_for(waiter, 1)
    assert version == 1 and snapshot[("app", "A")].replicas[0].replica_id == "A#1"
    assert await broker.listen(1, 0.01) is None  # nothing new: times out
    assert (await broker.listen(7, 0))[0] == 1  # type: ignore[index]
    await broker.report("G#1", {("app", "A"): 2.0})
    await broker.report("G#2", {("app", "A"): 1.5, ("app", "B"): 1.0})
    assert await broker.loads() == {("app", "A"): 3.5, ("app", "B"): 1.0}


async def test_wait_applied_waits_for_every_replica_view() -> None:
    broker = MembershipActor()
    view = DeploymentView(5, -1, {}, (ReplicaEntry("A#1", object()),
                                      ReplicaEntry("B#1", object())))
    await broker.publish(1, {("app", "A"): view})
    assert not await broker.wait_applied(1, 0.02)  # nobody has applied version 1
    await broker.listen(1, 0, source_id="A#1")
    assert not await broker.wait_applied(1, 0.02)
    await broker.listen(1, 0, source_id="B#1")
    assert await broker.wait_applied(1, 0.02)


def test_declared_resources_names_what_the_options_ask_for() -> None:
    from llmserve.serve.ray.placement import declared_resources

    assert declared_resources(None) == {}
    assert declared_resources({"num_cpus": 0.5, "num_gpus": 1, "memory": 2**30,
                               "resources": {"worker": 1}, "runtime_env": {}}) == {
        "CPU": 0.5, "GPU": 1.0, "memory": float(2**30), "worker": 1.0}
