"""The control loop stepped by hand: a fake runtime, a fake clock, no threads, no timers.

Each step is ``controller.tick()`` followed by letting the tasks it started run to their
next wait (zero-delay yields of the one event loop: nothing waits on time).
"""

from __future__ import annotations

import asyncio

from llmserve import serve
from llmserve.serve.controller import Controller
from llmserve.serve.status import DeploymentStatusCode, ReplicaState
from tests.unit.serve.fake_runtime import FakeClock, FakeRuntime


@serve.deployment(num_replicas=2, health_check_period_s=5.0, graceful_shutdown_timeout_s=1.0)
class Model:
    def __init__(self, version: str) -> None:
        self.version = version


@serve.deployment(autoscaling_config={
    "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 1,
    "upscale_delay_s": 3.0, "downscale_delay_s": 10.0, "look_back_period_s": 1.0})
class Elastic:
    pass


async def drain() -> None:
    """Run every task that can make progress now, to its next wait."""
    for _ in range(50):
        await asyncio.sleep(0)


async def step(controller: Controller, clock: FakeClock | None = None,
               advance_s: float = 0.0) -> None:
    await drain()  # what finished since the last step is seen by this tick
    if clock is not None:
        clock.advance(advance_s)
    controller.tick()
    await drain()


def make() -> tuple[Controller, FakeRuntime, FakeClock]:
    runtime, clock = FakeRuntime(), FakeClock()
    return Controller(runtime, clock), runtime, clock  # type: ignore[arg-type]


async def test_a_new_version_rolls_out_one_replica_at_a_time_without_a_gap() -> None:
    controller, runtime, _ = make()
    controller.apply_app(Model.bind("v1"), "app", None)
    await step(controller)
    router = controller.router_for("app", "Model")
    old = set(runtime.running("Model"))
    assert len(old) == 2 and set(router.replica_ids) == old
    runtime.hold_starts = True
    controller.apply_app(Model.bind("v2"), "app", None)
    await step(controller)
    new = list(runtime.pending)
    assert len(new) == 2 and set(router.replica_ids) == old  # old ones serve meanwhile
    runtime.finish_start(new[0])
    await step(controller)
    assert len(runtime.stopped) == 1 and runtime.stopped[0] in old  # one old for one new
    assert set(router.replica_ids) == (old - set(runtime.stopped)) | {new[0]}
    runtime.finish_start(new[1])
    await step(controller)
    assert set(runtime.stopped) == old and set(router.replica_ids) == set(new)
    state = controller.deployments[("app", "Model")]
    assert state.is_settled() and {r.version for r in state.replicas} == {state.desired.version}


async def test_a_replica_failing_its_health_check_is_replaced_at_the_check_period() -> None:
    controller, runtime, clock = make()
    controller.apply_app(Model.bind("v1"), "app", None)
    await step(controller)
    sick_id, well_id = runtime.running("Model")
    runtime.replicas[sick_id].healthy = False
    await step(controller, clock, 4.9)  # before the period: no check yet
    assert runtime.replicas[sick_id].health_checks == 0 and runtime.killed == []
    await step(controller, clock, 0.2)  # the check fails: killed, out of the router
    assert [rid for rid, _ in runtime.killed] == [sick_id]
    assert "health check failed" in runtime.killed[0][1]
    router = controller.router_for("app", "Model")
    assert sick_id not in router.replica_ids
    await step(controller)  # the next tick starts its replacement
    assert len(runtime.running("Model")) == 2 and well_id in runtime.running("Model")
    assert set(router.replica_ids) == set(runtime.running("Model"))


async def test_a_dead_replica_is_replaced_without_waiting_for_a_health_check() -> None:
    controller, runtime, _ = make()
    controller.apply_app(Model.bind("v1"), "app", None)
    await step(controller)
    dead = runtime.running("Model")[0]
    runtime.replicas[dead].is_alive = False
    await step(controller)
    await step(controller)
    assert runtime.killed == [(dead, "replica process died")]
    assert len(runtime.running("Model")) == 2 and dead not in runtime.running("Model")


async def test_autoscaling_waits_its_upscale_and_downscale_delays() -> None:
    controller, runtime, clock = make()
    controller.apply_app(Elastic.bind(), "app", None)
    await step(controller)
    state = controller.deployments[("app", "Elastic")]
    router = controller.router_for("app", "Elastic")
    assert state.target_replicas == 1
    router.reported_ongoing = 3.0  # three requests served for it: wants 3 replicas
    for _ in range(5):
        await step(controller, clock, 0.5)  # 2.0 s into the 3.0 s upscale delay
    assert state.target_replicas == 1 and len(runtime.running("Elastic")) == 1
    await step(controller, clock, 1.0)
    assert state.target_replicas == 3
    await step(controller)
    assert len(runtime.running("Elastic")) == 3
    router.reported_ongoing = 0.0
    await step(controller, clock, 2.0)  # the look-back window forgets the load
    for _ in range(9):
        await step(controller, clock, 1.0)  # 9 s into the 10 s downscale delay
    assert state.target_replicas == 3
    await step(controller, clock, 1.5)
    assert state.target_replicas == 1
    await step(controller)
    assert len(runtime.running("Elastic")) == 1 and len(runtime.stopped) == 2


async def test_remote_load_reported_through_the_link_counts_for_autoscaling() -> None:
    controller, runtime, clock = make()
    controller.apply_app(Elastic.bind(), "app", None)
    await step(controller)
    assert runtime.link_given is not None
    (routes,) = runtime.link_given.routes()
    assert (routes.app_name, routes.deployment_name, routes.is_ingress) == \
        ("app", "Elastic", True)
    assert routes.replica_ids == tuple(runtime.running("Elastic"))
    runtime.link_given.report_remote_loads({("app", "Elastic"): 4.0})
    await step(controller, clock, 0.1)  # the upscale decision starts holding
    await step(controller, clock, 3.0)
    assert controller.deployments[("app", "Elastic")].target_replicas == 4


async def test_restoring_adopts_running_replicas_and_those_still_starting() -> None:
    first, old_runtime, _ = make()
    first.apply_app(Model.bind("v1"), "app", None)
    await step(first)
    running = old_runtime.running("Model")
    state = first.deployments[("app", "Model")]
    version = state.desired.version
    refs = {rid: old_runtime.replicas[rid] for rid in running}

    controller, runtime, _ = make()  # a restarted controller, over the same replicas
    runtime.hold_starts = True
    starting = asyncio.get_running_loop().create_future()
    controller.restore_app(Model.bind("v1"), "app", None,
                           adopted={"Model": [(running[0], version, refs[running[0]])]},
                           targets={}, starting={"Model": [(running[1], "", starting)]})
    await step(controller)
    router = controller.router_for("app", "Model")
    assert runtime.started == []  # nothing new: one adopted, one still starting
    assert router.replica_ids == [running[0]]
    assert controller.deployments[("app", "Model")].status_code() is \
        DeploymentStatusCode.UPDATING
    starting.set_result(refs[running[1]])
    await step(controller)
    assert set(router.replica_ids) == set(running) and runtime.started == []
    assert controller.deployments[("app", "Model")].is_settled()


async def test_a_start_that_fails_is_retried_after_a_backoff_then_deploy_fails() -> None:
    controller, runtime, clock = make()
    runtime.hold_starts = True
    controller.apply_app(Model.options(num_replicas=1).bind("v1"), "app", None)
    state = controller.deployments[("app", "Model")]
    for attempt in range(3):
        await step(controller)
        (rid,) = runtime.pending
        runtime.fail_start(rid, RuntimeError(f"boom {attempt}"))
        await drain()
        await step(controller)  # within the backoff: no new start
        assert runtime.pending == {}
        clock.advance(30.0)
    assert state.status_code() is DeploymentStatusCode.DEPLOY_FAILED
    assert "boom 2" in state.last_error
    await step(controller)
    assert runtime.pending == {} and len(runtime.started) == 3
    assert all(r.state is not ReplicaState.RUNNING for r in state.replicas)
