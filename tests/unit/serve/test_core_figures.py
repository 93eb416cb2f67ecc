"""The serving core's deployment gauges as plain figures: computed from a controller's
deployments, rendered for Prometheus with their controller's label, and relayed by the
membership actor on the Ray runtime (which forgets them once the controller goes quiet)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmserve.serve.metrics import DeploymentCollector, DeploymentFigures, figures_of
from llmserve.serve.ray import membership
from llmserve.serve.ray.membership import MembershipActor
from tests.unit.serve.test_controller_steps import Elastic, make, step

KEY = ("app", "Elastic")


async def test_remote_queued_requests_are_queued_not_ongoing() -> None:
    controller, runtime, clock = make()
    controller.apply_app(Elastic.bind(), "app", None)
    await step(controller)
    assert runtime.link_given is not None
    # other processes' routers: 5 requests, 2 of them waiting in their queues
    runtime.link_given.report_remote_loads({KEY: 5.0})
    (figures,) = figures_of(controller.deployments, {KEY: 2.0})
    assert (figures.queued, figures.ongoing) == (2.0, 3.0)
    assert (figures.desired, figures.running) == (1, 1)
    assert dict(figures.replicas) == {"STARTING": 0, "RUNNING": 1, "STOPPING": 0,
                                      "UNHEALTHY": 0}
    await step(controller, clock, 0.1)
    await step(controller, clock, 3.0)  # the autoscaler wants 5 (max 4)
    (scaled,) = figures_of(controller.deployments, {KEY: 2.0})
    assert scaled.desired == 4


def test_collector_labels_every_gauge_with_its_controller() -> None:
    figures = DeploymentFigures("app", "D", 1.0, 2.0, (("RUNNING", 2), ("STARTING", 1)), 3, 2)
    registry = CollectorRegistry()
    registry.register(DeploymentCollector(lambda: ("host:42", (figures,))))
    samples = {(s.name, s.labels.get("state", "")): s for family in
               text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    assert {name for name, _ in samples} == {
        "llmserve_serve_deployment_queued_requests", "llmserve_serve_deployment_ongoing_requests",
        "llmserve_serve_deployment_replicas", "llmserve_serve_autoscaling_desired_replicas",
        "llmserve_serve_autoscaling_running_replicas"}
    assert all(s.labels["controller"] == "host:42" and s.labels["deployment"] == "D"
               for s in samples.values())
    assert samples[("llmserve_serve_deployment_replicas", "STARTING")].value == 1
    assert samples[("llmserve_serve_autoscaling_desired_replicas", "")].value == 3


async def test_membership_sums_queued_reports_and_drops_stale_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker = MembershipActor()
    await broker.report("G#1", {KEY: 3.0}, {KEY: 1.0})
    await broker.report("G#2", {KEY: 2.0}, {KEY: 2.0})
    await broker.report("R#1", {KEY: 1.0})  # a replica's handles queue nothing
    assert await broker.loads() == {KEY: 6.0}
    assert await broker.queued() == {KEY: 3.0}
    monkeypatch.setattr(membership, "REPORT_TTL_S", -1.0)  # every report is stale
    assert await broker.queued() == {} and await broker.loads() == {}


async def test_membership_forgets_figures_the_controller_stopped_sending(
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker = MembershipActor()
    assert await broker.figures() == ("", ())
    figures = (DeploymentFigures("app", "D", 0.0, 0.0, (("RUNNING", 1),), 1, 1),)
    await broker.publish_figures("host:42", figures)
    assert await broker.figures() == ("host:42", figures)
    monkeypatch.setattr(membership, "FIGURES_TTL_S", -1.0)  # the controller went quiet
    assert await broker.figures() == ("", ())
