"""Placement on a head (no GPU) and two workers (2 GPUs each): GPUs, fractions, bundles."""

from __future__ import annotations

from collections import Counter

import pytest

from llmserve import serve
from llmserve.serve.ray.cluster import replica_placements
from tests.integration.ray.apps import GpuUser, Sleeper
from tests.integration.ray.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


def _by_deployment(prefix: str) -> list[object]:
    return [p for rid, p in replica_placements().items() if rid.startswith(prefix + "#")]


def test_whole_and_fractional_gpus_land_on_gpu_nodes(ray_serve: RayCluster) -> None:
    whole = GpuUser.options(name="Whole", num_replicas=3)
    half = GpuUser.options(name="Half", num_replicas=2,
                           ray_actor_options={"num_cpus": 0, "num_gpus": 0.5})
    serve.run(whole.bind(), name="whole", route_prefix=None, runtime="ray")
    serve.run(half.bind(), name="half", route_prefix=None, runtime="ray")
    used = Counter()
    for p in _by_deployment("Whole"):
        assert p.node_id in ray_serve.worker_node_ids
        assert len(p.gpu_ids) == 1 and p.resources.get("GPU") == 1.0
        used[(p.node_id, p.gpu_ids[0])] += 1
    assert len(used) == 3  # three distinct GPUs
    halves = _by_deployment("Half")
    assert len(halves) == 2
    # three of four GPUs are taken whole: both halves must share the last one
    assert len({(p.node_id, tuple(p.gpu_ids)) for p in halves}) == 1
    assert all(p.resources.get("GPU") == 0.5 for p in halves)
    assert not used.keys() & {(halves[0].node_id, halves[0].gpu_ids[0])}
    reply = serve.get_app_handle("half").remote().result(timeout_s=30)
    assert reply["cuda"] == halves[0].gpu_ids[0]  # the replica sees only its GPU


def test_strict_pack_placement_groups_take_a_whole_node_each(ray_serve: RayCluster) -> None:
    import ray
    from ray.util import placement_group_table

    tp2 = Sleeper.options(name="TP2", num_replicas=2, ray_actor_options={
        "placement_group_bundles": [{"CPU": 0.1, "GPU": 1}, {"GPU": 1}],
        "placement_group_strategy": "STRICT_PACK"})
    serve.run(tp2.bind(), name="tp2", route_prefix=None, runtime="ray")
    placements = _by_deployment("TP2")
    assert {p.node_id for p in placements} == set(ray_serve.worker_node_ids)
    table = placement_group_table()
    for p in placements:
        assert p.placement_group_id is not None
        group = table[p.placement_group_id]
        assert group["strategy"] == "STRICT_PACK" and group["state"] == "CREATED"
        assert set(group["bundles_to_node_id"].values()) == {p.node_id}
        assert p.resources.get("GPU") == 1.0  # the actor holds bundle 0's GPU
    assert ray.available_resources().get("GPU", 0) == 0
    serve.delete("tp2")
    assert all(g["state"] == "REMOVED" for g in placement_group_table().values()
               if g["name"].startswith("llmserve:TP2"))


def test_spread_bundles_use_both_workers(ray_serve: RayCluster) -> None:
    from ray.util import placement_group_table

    spread = Sleeper.options(name="Spread", ray_actor_options={
        "num_cpus": 0, "placement_group_bundles": [{"GPU": 1}, {"GPU": 1}],
        "placement_group_strategy": "SPREAD"})
    serve.run(spread.bind(), name="spread", route_prefix=None, runtime="ray")
    (placement,) = _by_deployment("Spread")
    group = placement_group_table()[placement.placement_group_id]
    assert set(group["bundles_to_node_id"].values()) == set(ray_serve.worker_node_ids)
